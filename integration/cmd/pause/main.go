// Command pause is the process of the pod sandboxes of lazypull's CRI
// tests, built by the tests into an image of their own (no public
// registry's pause image): like Kubernetes' pause, it waits until it is
// told to stop and exits 0, and reaps the orphans a shared PID namespace
// gives it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
