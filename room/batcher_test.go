package room

import (
	"context"
	"testing"
	"time"
)

// TestLeaderAnswersItsClientFirst: the request that leads a batch must get
// its answer once its own job is committed, even though jobs queued
// meanwhile keep the batcher busy. (It used to run every following batch
// first: under steady load one client waited hundreds of milliseconds.)
func TestLeaderAnswersItsClientFirst(t *testing.T) {
	started := make(chan struct{}, 4)
	release := make(chan struct{})
	b := &batcher{run: func(context.Context, func(BatchTx) error) error {
		started <- struct{}{}
		<-release // the batch "commits" when the test says so
		return nil
	}}
	ctx := context.Background()
	leader := make(chan error, 1)
	go func() { leader <- b.do(ctx, &job{roomID: "!a:example.org"}) }()
	<-started // the leader's batch runs

	other := make(chan error, 1)
	go func() { other <- b.do(ctx, &job{roomID: "!b:example.org"}) }()
	for queued := 0; queued == 0; {
		time.Sleep(time.Millisecond)
		b.mu.Lock()
		queued = len(b.pending)
		b.mu.Unlock()
	}

	release <- struct{}{} // the leader's batch commits
	<-started             // the next batch, the other job's, runs
	select {
	case err := <-leader:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the leader's request is still waiting: it runs the next batch before answering")
	}
	release <- struct{}{}
	if err := <-other; err != nil {
		t.Fatal(err)
	}
}
