package main

import (
	"os"
	"syscall"
	"time"
)

// exitWithParent asks this process to shut down (as if sent SIGTERM) once the process that
// started it has gone, so a killed test run leaves no API server behind. A parent's death is
// seen as a change of parent pid (the orphan is re-parented); this works for any thread of
// the parent, unlike PR_SET_PDEATHSIG, which fires when the starting thread exits.
func exitWithParent() {
	parent := os.Getppid()
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			if os.Getppid() != parent {
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
				return
			}
		}
	}()
}
