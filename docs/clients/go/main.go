// A Go reader of a sidecar-state LMDB view (spec.store.engine: lmdb), the rules the Python
// client keeps, in Go: open $SIDECAR_STATE_LMDB_PATH/current read-only with locking (a slot in
// lock.mdb, which must be writable), one short read transaction per look-up, and reopen when
// the hydrator has published a new environment (meta "superseded").
//
//	go run . flag:new-ui-layout flag:dark-mode
//
// prints {"meta": {...}, "values": {"flag:new-ui-layout": "true", ...}} (null: no such key).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/PowerDNS/lmdb-go/lmdb"
)

// Reader reads the served view; not safe for concurrent use (give each goroutine its own, or
// guard it): LMDB read transactions belong to an OS thread.
type Reader struct {
	root       string
	env        *lmdb.Env
	data, meta lmdb.DBI
}

func Open(root string) (*Reader, error) {
	r := &Reader{root: root}
	return r, r.open()
}

func (r *Reader) open() error {
	if r.env != nil {
		r.env.Close()
		r.env = nil
	}
	target, err := filepath.EvalSymlinks(filepath.Join(r.root, "current"))
	if err != nil {
		return fmt.Errorf("no view published under %s yet: %w", r.root, err)
	}
	env, err := lmdb.NewEnv()
	if err != nil {
		return err
	}
	if err = env.SetMaxDBs(4); err == nil {
		err = env.Open(target, lmdb.Readonly, 0)
	}
	if err == nil {
		err = env.View(func(txn *lmdb.Txn) (err error) {
			if r.data, err = txn.OpenDBI("data", 0); err != nil {
				return err
			}
			r.meta, err = txn.OpenDBI("meta", 0)
			return err
		})
	}
	if err != nil {
		env.Close()
		return err
	}
	r.env = env
	return nil
}

var errSuperseded = errors.New("superseded")

// view runs fn in one read transaction of the served environment, reopening it once the
// hydrator has switched to a new one.
func (r *Reader) view(fn func(txn *lmdb.Txn) error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for attempt := 0; attempt < 3; attempt++ {
		err := r.env.View(func(txn *lmdb.Txn) error {
			if _, err := txn.Get(r.meta, []byte("superseded")); err == nil {
				return errSuperseded
			} else if !lmdb.IsNotFound(err) {
				return err
			}
			return fn(txn)
		})
		if !errors.Is(err, errSuperseded) {
			return err
		}
		if err := r.open(); err != nil {
			return err
		}
	}
	return errors.New("the view keeps being replaced; try again")
}

// GetMany reads keys from one snapshot; a missing key is nil.
func (r *Reader) GetMany(keys []string) (map[string]*string, error) {
	out := make(map[string]*string, len(keys))
	err := r.view(func(txn *lmdb.Txn) error {
		for _, key := range keys {
			value, err := txn.Get(r.data, []byte(key))
			if lmdb.IsNotFound(err) {
				out[key] = nil
				continue
			} else if err != nil {
				return err
			}
			text := string(value) // copied: the bytes are valid only inside the transaction
			out[key] = &text
		}
		return nil
	})
	return out, err
}

// Meta is the view's metadata (hydrated, complete, staleness_ms, ...), bookkeeping left out.
func (r *Reader) Meta() (map[string]string, error) {
	out := map[string]string{}
	err := r.view(func(txn *lmdb.Txn) error {
		cursor, err := txn.OpenCursor(r.meta)
		if err != nil {
			return err
		}
		defer cursor.Close()
		for {
			key, value, err := cursor.Get(nil, nil, lmdb.Next)
			if lmdb.IsNotFound(err) {
				return nil
			} else if err != nil {
				return err
			}
			name := string(key)
			if strings.Contains(name, "/") || name == "sentinel" || name == "superseded" {
				continue
			}
			out[name] = string(value)
		}
	})
	return out, err
}

func main() {
	reader, err := Open(os.Getenv("SIDECAR_STATE_LMDB_PATH"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	values, err := reader.GetMany(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	meta, err := reader.Meta()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{"meta": meta, "values": values})
}
