//go:build !unix

package e2e

import "syscall"

// setRecvBuf leaves the receive buffer alone where SO_RCVBUF is not settable
// the unix way; the slow-client test then needs more data to overflow.
func setRecvBuf(int) func(network, address string, c syscall.RawConn) error { return nil }
