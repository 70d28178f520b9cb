package main

import (
	"net"
	"os"
)

// sdNotify sends state ("READY=1", "STOPPING=1", ...) to the service
// manager, as sd_notify(3) does, when it started the daemon with
// NOTIFY_SOCKET set (a systemd unit of Type=notify); otherwise it does
// nothing. A socket path starting with "@" is in the abstract namespace,
// which Go's net package understands as it is.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
