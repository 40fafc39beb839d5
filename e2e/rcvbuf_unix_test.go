//go:build unix

package e2e

import (
	"syscall"
)

// setRecvBuf caps a socket's receive buffer before it connects, which also
// turns off the kernel's receive-window autotuning for it.
func setRecvBuf(bytes int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, bytes)
		})
		if err != nil {
			return err
		}
		return serr
	}
}
