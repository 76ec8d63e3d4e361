// Goroutines, channels, time.Timer, sync.WaitGroup, sync.Mutex, select and a
// TCP echo over loopback; every line it prints is deterministic.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"sync"
	"time"
)

func fail(format string, args ...any) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	fmt.Printf("GOOS=%s GOARCH=%s\n", runtime.GOOS, runtime.GOARCH)

	// 100 goroutines squaring numbers through channels.
	jobs := make(chan int)
	results := make(chan int, 1000)
	var wg sync.WaitGroup
	for w := 0; w < 100; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range jobs {
				results <- n * n
			}
		}()
	}
	for i := 1; i <= 1000; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(results)
	sum := 0
	for r := range results {
		sum += r
	}
	fmt.Printf("sum of squares 1..1000: %d\n", sum)

	// A contended mutex.
	var mu sync.Mutex
	counter := 0
	var wg2 sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for i := 0; i < 10000; i++ {
				mu.Lock()
				counter++
				mu.Unlock()
				if i%1000 == 0 {
					runtime.Gosched()
				}
			}
		}()
	}
	wg2.Wait()
	fmt.Printf("mutex counter: %d\n", counter)

	// Timers: fire in deadline order, a stopped one never fires.
	start := time.Now()
	order := make(chan string, 3)
	t1 := time.AfterFunc(30*time.Millisecond, func() { order <- "30ms" })
	t2 := time.AfterFunc(10*time.Millisecond, func() { order <- "10ms" })
	stopped := time.AfterFunc(20*time.Millisecond, func() { order <- "stopped" })
	if !stopped.Stop() {
		fail("could not stop a pending timer")
	}
	first, second := <-order, <-order
	fmt.Printf("timers fired in order: %s %s\n", first, second)
	t1.Stop()
	t2.Stop()
	timer := time.NewTimer(20 * time.Millisecond)
	select {
	case <-timer.C:
		fmt.Printf("time.Timer fired after at least 20ms: %v\n", time.Since(start) >= 20*time.Millisecond)
	case <-time.After(10 * time.Second):
		fail("timer did not fire")
	}
	ticker := time.NewTicker(5 * time.Millisecond)
	ticks := 0
	for range ticker.C {
		ticks++
		if ticks == 3 {
			break
		}
	}
	ticker.Stop()
	fmt.Printf("ticker ticked %d times\n", ticks)

	// TCP echo over loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		for i := 0; i < 3; i++ {
			conn, err := ln.Accept()
			if err != nil {
				fail("accept: %v", err)
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte("echo: " + line))
				}
			}(conn)
		}
	}()
	replies := make(chan string, 9)
	var cwg sync.WaitGroup
	for c := 0; c < 3; c++ {
		cwg.Add(1)
		go func(c int) {
			defer cwg.Done()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				fail("dial: %v", err)
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			for i := 0; i < 3; i++ {
				fmt.Fprintf(conn, "client %d line %d\n", c, i)
				line, err := r.ReadString('\n')
				if err != nil {
					fail("read: %v", err)
				}
				replies <- line[:len(line)-1]
			}
		}(c)
	}
	cwg.Wait()
	swg.Wait()
	ln.Close()
	close(replies)
	var all []string
	for r := range replies {
		all = append(all, r)
	}
	sort.Strings(all)
	for _, r := range all {
		fmt.Println(r)
	}
	fmt.Println("done")
}
