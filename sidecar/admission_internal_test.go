package sidecar

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan struct{}, 10)
	ln := &limitListener{Listener: inner, max: 2, refused: func() { refused <- struct{}{} }}
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	a := <-accepted
	<-accepted
	third := dial()
	select {
	case <-refused:
	case <-time.After(5 * time.Second):
		t.Fatal("third socket not refused")
	}
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err == nil {
		t.Fatal("third socket readable: not closed")
	}
	a.Close()
	a.Close() // counted once
	dial()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no socket accepted after one closed")
	}
	if n := ln.open.Load(); n != 2 {
		t.Fatalf("open = %d, want 2", n)
	}
}

func TestAdmissionSweep(t *testing.T) {
	a := newAdmission(Admission{ConnRatePerIP: 1, ConnBurstPerIP: 2}.withDefaults())
	ip := netip.MustParseAddr("203.0.113.1")
	a.mu.Lock()
	a.allowHandshakeLocked(ip)
	a.mu.Unlock()
	now := time.Now()
	a.sweep(now)
	if len(a.rates) != 1 {
		t.Fatalf("swept an address with its burst not back: %d left", len(a.rates))
	}
	a.sweep(now.Add(2 * time.Second))
	if len(a.rates) != 0 {
		t.Fatalf("kept an address with its whole burst back: %d left", len(a.rates))
	}
	if k := clientKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")); k != netip.MustParseAddr("2001:db8:1:2::") {
		t.Fatalf("clientKey of an IPv6 address = %v, want its /64", k)
	}
}
