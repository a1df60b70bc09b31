package room

import (
	"context"

	"maunium.net/go/mautrix/id"
)

// RunBatch runs fns as the jobs of one batch, fns[i] on rooms[i], and
// returns what each job was answered.
func (s *Service) RunBatch(ctx context.Context, rooms []id.RoomID, fns []func(Tx) error) []error {
	jobs := make([]*job, len(fns))
	for i, fn := range fns {
		jobs[i] = &job{ctx: ctx, roomID: rooms[i], fn: fn, done: make(chan error, 1)}
	}
	s.batch.runBatch(jobs)
	errs := make([]error, len(jobs))
	for i, j := range jobs {
		errs[i] = <-j.done
	}
	return errs
}

// SendJob is the job Send runs: it stores the event's ID into *eventID.
func (s *Service) SendJob(p SendParams, eventID *id.EventID) func(Tx) error {
	txn := txnScope(p.TxnID, "send", string(p.RoomID), p.Type)
	return func(tx Tx) error {
		retried, err := checkRelation(tx, p, txn)
		if err != nil || retried != "" {
			*eventID = retried
			return err
		}
		*eventID, err = s.appendEvent(tx, eventRequest{Sender: p.Sender, Type: p.Type, Content: p.Content, TxnDevice: p.Device, TxnID: txn})
		return err
	}
}

// CheckContent and CanonicalContent expose the content checks.
var (
	CheckContent        = checkContent
	CanonicalContent    = canonicalContent
	CheckContentDecoded = checkContentDecoded
)
