package main

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// delayLineArg is the argument with which the benchmark's binary runs as a
// delay line: `bench delay-line NETNS QUEUE MAXLEN DELAY DOWN`, counting
// in the memory it is given as file descriptor 3, until its stdin ends.
const delayLineArg = "delay-line"

// delayLineProc is a delay line in a process of its own: the benchmark's
// binary run with delayLineArg. The process has nothing else to do, so its
// loop always finds the runtime idle, and no garbage collection or busy
// goroutine of the benchmark holds a packet back. The two share the
// counters through a memfd mapped in both; the benchmark only reads them.
type delayLineProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mem   []byte
	c     *lineCounters
	done  chan struct{}
	err   error // the process's end; read after done
}

// countersSize is the shared memory: one page, more than lineCounters.
const countersSize = 4096

var _ [countersSize - unsafe.Sizeof(lineCounters{})]byte // it fits

// startDelayLine starts a delay line process for queue in the network
// namespace at nsPath (see newDelayLine) and returns once it is bound to
// the queue. Its stderr goes to log.
func startDelayLine(nsPath string, queue uint16, maxLen uint32, delay time.Duration, down netip.Addr, log io.Writer) (*delayLineProc, error) {
	fd, err := unix.MemfdCreate("lazypull-bench-delay-line", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "delay line counters")
	defer f.Close() // the child has its own copy
	if err := f.Truncate(countersSize); err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, countersSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	p := &delayLineProc{mem: mem, c: (*lineCounters)(unsafe.Pointer(&mem[0])), done: make(chan struct{})}
	p.cmd = exec.Command(self, delayLineArg, nsPath, strconv.Itoa(int(queue)), strconv.FormatUint(uint64(maxLen), 10), delay.String(), down.String())
	p.cmd.ExtraFiles = []*os.File{f}
	p.cmd.Stderr = log
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("delay line: %w", err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	if strings.TrimSpace(line) != "ready" {
		p.Close()
		return nil, fmt.Errorf("delay line did not start (%v; its error is in the log)", p.err)
	}
	return p, nil
}

func (p *delayLineProc) stats() delayStats { return p.c.stats() }

// Delivered returns the TCP payload bytes that went from the registry to
// the node.
func (p *delayLineProc) Delivered() int64 { return p.c.payload.Load() }

// Err reports the process's end, if it ended.
func (p *delayLineProc) Err() error {
	select {
	case <-p.done:
		if p.err == nil {
			return fmt.Errorf("delay line ended")
		}
		return fmt.Errorf("delay line: %w", p.err)
	default:
		return nil
	}
}

// Close ends the process (its stdin ends; killed if it has not exited 10
// seconds later) and unmaps the counters.
func (p *delayLineProc) Close() error {
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	err := p.err
	if p.mem != nil {
		// The counters stay readable by stats until here only.
		p.c = &lineCounters{}
		unix.Munmap(p.mem)
		p.mem = nil
	}
	return err
}

// runDelayLine is the delay line process: it counts in the memory at file
// descriptor 3, prints "ready" once bound to its queue and runs until its
// stdin ends.
func runDelayLine(args []string) int {
	if err := delayLineMain(args); err != nil {
		fmt.Fprintf(os.Stderr, "delay line: %v\n", err)
		return 1
	}
	return 0
}

func delayLineMain(args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("want NETNS QUEUE MAXLEN DELAY DOWN, got %q", args)
	}
	queue, err1 := strconv.ParseUint(args[1], 10, 16)
	maxLen, err2 := strconv.ParseUint(args[2], 10, 32)
	delay, err3 := time.ParseDuration(args[3])
	down, err4 := netip.ParseAddr(args[4])
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return fmt.Errorf("bad arguments %q", args)
	}
	// The loop allocates nothing: no garbage collection (see loop), unless
	// something else grows the heap beyond the limit.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(256 << 20)
	mem, err := unix.Mmap(3, 0, countersSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap the counters: %w", err)
	}
	nsFd, err := unix.Open(args[0], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d, err := newDelayLine(nsFd, uint16(queue), uint32(maxLen), delay, down, (*lineCounters)(unsafe.Pointer(&mem[0])))
	unix.Close(nsFd)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return d.Close()
}
