package localcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Durability on disk.
//
// A group is acknowledged once it is in the write-ahead log (wal.go), synced.
// Badger, which runs without syncing, catches up at checkpoints: the
// checkpoint loop notes the last group applied to Badger, syncs Badger's
// files (every memtable log, the value log files written since the last
// checkpoint, the directory; tables and the manifest Badger syncs itself),
// records the group in the log's checkpoint file and deletes the segments
// that hold nothing newer. Open replays every group after the checkpoint, so
// whatever Badger lost in a crash, or applied already, ends up as the log
// says: a replayed group sets each key to the value the group gave it, never
// adds to it.

// openWAL opens the write-ahead log and replays it into Badger.
func (s *Store) openWAL() error {
	w, err := openWAL(filepath.Join(s.opts.Dir, walDirName), s.log)
	if err != nil {
		return err
	}
	s.wal = w
	wb := s.db.NewWriteBatch()
	groups, ops := 0, 0
	next, err := w.replay(func(seq uint64, payload []byte) error {
		_, group, err := decodeWALGroup(payload)
		if err != nil {
			return err
		}
		for _, op := range group {
			switch op.kind {
			case walOpSet:
				err = wb.SetEntry(badger.NewEntry(op.key, op.value).WithMeta(op.userMeta))
			case walOpDelete:
				err = wb.Delete(op.key)
			}
			if err != nil {
				return err
			}
		}
		groups++
		ops += len(group)
		return nil
	})
	if err != nil {
		wb.Cancel()
		return err
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("write-ahead log: replay: %w", err)
	}
	s.applied.Store(next - 1)
	s.ckApplied = w.checkpoint
	if groups > 0 {
		s.log.Info("write-ahead log replayed", "groups", groups, "operations", ops, "last_group", next-1)
	}
	return nil
}

// checkpointLoop runs checkpoints every CheckpointInterval, and when the log
// has grown by checkpointBytes, until ctx ends.
func (s *Store) checkpointLoop(ctx context.Context) {
	defer close(s.ckDone)
	if s.wal == nil || s.opts.noCheckpoint {
		return
	}
	t := time.NewTicker(s.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.ckNotify:
		}
		err := s.checkpoint(ckPeriodic)
		if errors.Is(err, ErrFailed) {
			return // the store logged its failure; the log stays for the next Open
		}
		if err != nil {
			// The log keeps growing until a checkpoint succeeds; nothing
			// acknowledged is at risk.
			s.log.Warn("checkpoint failed", "err", err)
		}
	}
}

// ckKind says when a checkpoint runs.
type ckKind int

const (
	// ckPeriodic syncs Badger's files only when groups were applied since
	// the last checkpoint.
	ckPeriodic ckKind = iota
	// ckOpen always syncs: what Open replayed and load wrote, and the
	// files of a fresh store, become durable before the first write.
	ckOpen
	// ckFinal always syncs, and the log takes no more appends.
	ckFinal
)

// checkpoint makes every group applied so far durable in Badger's files and
// lets the log drop them.
//
// A failed sync of Badger's files fails the store, and a failed store never
// checkpoints again: after fdatasync reports a write-back error, the pages
// it could not write may be dropped or marked clean, so a later sync that
// succeeds proves nothing about them. The log keeps every group from the
// last good checkpoint on, and the next Open replays them.
func (s *Store) checkpoint(kind ckKind) error {
	s.ckMu.Lock()
	defer s.ckMu.Unlock()
	if err := s.failedErr(); err != nil {
		return err
	}
	s.ckBytes.Store(s.walBytes.Load())
	applied := s.applied.Load()
	if applied != s.ckApplied || kind != ckPeriodic {
		if err := s.syncBadgerFiles(); err != nil {
			return s.fail(fmt.Errorf("checkpoint: sync Badger's files: %w", err))
		}
		if kind != ckFinal {
			if _, err := s.releaseMapped(); err != nil {
				s.log.Warn("checkpoint: Badger's mapped files stay resident", "err", err)
			}
		}
	}
	if err := s.wal.advance(applied, kind == ckFinal); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	s.ckApplied = applied
	return nil
}

// noteWALAppend counts n bytes appended to the log and wakes the checkpoint
// loop when enough have been since the last checkpoint. Committer only.
func (s *Store) noteWALAppend(n int) {
	if s.walBytes.Add(int64(n))-s.ckBytes.Load() >= checkpointBytes {
		select {
		case s.ckNotify <- struct{}{}:
		default:
		}
	}
}

// syncBadgerFiles makes everything Badger has written durable: it
// fdatasyncs every memtable log (.mem), every value log file (.vlog) not
// synced since it was last written to, and the directory. Tables (.sst) and
// the manifest are synced by Badger when written. Files Badger removes
// meanwhile are skipped: a memtable log goes only once its table is durable.
// The caller holds ckMu.
func (s *Store) syncBadgerFiles() error {
	entries, err := os.ReadDir(s.opts.Dir)
	if err != nil {
		return err
	}
	maxVlog := s.vlogSynced
	for _, e := range entries {
		name := e.Name()
		switch filepath.Ext(name) {
		case ".mem":
		case ".vlog":
			fid, err := strconv.ParseUint(strings.TrimSuffix(name, ".vlog"), 10, 32)
			if err != nil {
				continue
			}
			maxVlog = max(maxVlog, fid)
			if fid < s.vlogSynced {
				continue // rotated before the last sync: not written since
			}
		default:
			continue
		}
		if err := syncFile(filepath.Join(s.opts.Dir, name)); err != nil {
			return err
		}
	}
	if err := syncDir(s.opts.Dir); err != nil {
		return err
	}
	// The newest file may still be written to: sync it again next time.
	s.vlogSynced = maxVlog
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// fail marks the store failed with cause (the first cause is kept) and
// returns the error writes get from now on.
func (s *Store) fail(cause error) error {
	err := fmt.Errorf("%w: %w", ErrFailed, cause)
	if s.failure.CompareAndSwap(nil, &err) {
		s.log.Error("local store failed: writes are refused until it is reopened, which replays the write-ahead log", "err", cause)
	}
	return *s.failure.Load()
}

// failed returns the error writes get once the store failed, or nil.
func (s *Store) failedErr() error {
	if p := s.failure.Load(); p != nil {
		return *p
	}
	return nil
}
