package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of the times in /proc: 100 on every Linux
// architecture Go supports.
const clockTick = 10 * time.Millisecond

// cpuSnapshot is the CPU time used so far by each party of a run, and by
// the whole machine, so that a run can say where its time went and how busy
// the machine was with other work (it is shared: a noisy round shows).
type cpuSnapshot struct {
	server, db, client time.Duration
	machineBusy        time.Duration // all CPUs, everything but idle and iowait
	at                 time.Time
}

// cpuUse is the difference of two snapshots.
type cpuUse struct {
	server, db, client time.Duration
	other              time.Duration // the machine's busy time that none of the three used
	wall               time.Duration
}

func (b *bench) cpuNow() (cpuSnapshot, error) {
	var s cpuSnapshot
	var err error
	s.at = time.Now()
	if s.server, err = processCPU(b.srv.pid(), false); err != nil {
		return s, err
	}
	if s.db, err = postgresCPU(b.db.postmaster); err != nil {
		return s, err
	}
	// The load generators are this process (the Go client) and its
	// finished children (wrk, pgbench, psql; the server and PostgreSQL
	// never finish during a run).
	var self, children syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		return s, err
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children); err != nil {
		return s, err
	}
	s.client = rusageCPU(self) + rusageCPU(children)
	s.machineBusy, err = machineBusy()
	return s, err
}

func (s cpuSnapshot) since(t cpuSnapshot) cpuUse {
	u := cpuUse{
		server: s.server - t.server,
		db:     s.db - t.db,
		client: s.client - t.client,
		wall:   s.at.Sub(t.at),
	}
	u.other = max(0, s.machineBusy-t.machineBusy-u.server-u.db-u.client)
	return u
}

func rusageCPU(r syscall.Rusage) time.Duration {
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}

// statFields returns the fields of /proc/<pid>/stat after the command name
// (which may hold spaces): fields[0] is the state, [1] the parent pid, [11]
// utime, [12] stime, [13] cutime, [14] cstime (proc(5), less 3).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return f, nil
}

func ticks(fields []string, idx ...int) (time.Duration, error) {
	var sum int64
	for _, i := range idx {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return time.Duration(sum) * clockTick, nil
}

// processCPU is the user and system time of pid, and with children that of
// its children that have exited too.
func processCPU(pid int, children bool) (time.Duration, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if children {
		return ticks(f, 11, 12, 13, 14)
	}
	return ticks(f, 11, 12)
}

// postgresCPU is the CPU time of the PostgreSQL server whose postmaster is
// pid: its own and that of its backends, live or exited (an exited
// backend's time moves to the postmaster's children times).
func postgresCPU(postmaster int) (time.Duration, error) {
	total, err := processCPU(postmaster, true)
	if err != nil {
		return 0, err
	}
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, err
	}
	want := strconv.Itoa(postmaster)
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		f, err := statFields(pid)
		if err != nil || f[1] != want {
			continue // gone meanwhile, or not a child of this server
		}
		t, err := ticks(f, 11, 12)
		if err != nil {
			return 0, err
		}
		total += t
	}
	return total, nil
}

// machineBusy is the time all CPUs spent on anything but idle and iowait
// since boot, from /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy int64
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest times are already in user
			busy += n
		}
	}
	return time.Duration(busy) * clockTick, nil
}

// perOp formats CPU time per operation in microseconds, with three
// significant digits (an exported row takes well under one).
func perOp(d time.Duration, ops float64) string {
	if ops <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.3g", float64(d.Nanoseconds())/1e3/ops)
}

// fmtCPU says where a run's CPU went, per operation, and how much other
// work shared the machine (in cores).
func fmtCPU(u cpuUse, ops float64, withServer bool) string {
	s := "cpu µs/op:"
	if withServer {
		s += " server " + perOp(u.server, ops) + ","
	}
	s += " db " + perOp(u.db, ops) + ", client " + perOp(u.client, ops)
	if u.wall > 0 {
		s += fmt.Sprintf("; other load %.2f cores", u.other.Seconds()/u.wall.Seconds())
	}
	return s
}
