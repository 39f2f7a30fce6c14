package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/snowgate/snowgate/node"
)

func TestStatusSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "client.sock")
	s, err := ServeStatus(path, func() (any, error) { return map[string]int{"connections": 3}, nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	if dir, _ := os.Stat(filepath.Dir(path)); dir.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", dir.Mode())
	}
	b, err := FetchStatus(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if err := json.Unmarshal(b, &got); err != nil || got["connections"] != 3 {
		t.Fatalf("status %s, %v", b, err)
	}
	// A second daemon on the same socket is refused while the first serves.
	if _, err := ServeStatus(path, func() (any, error) { return nil, nil }, nil); err == nil {
		t.Fatal("second server on a live socket accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
	if _, err := FetchStatus(context.Background(), path); err == nil {
		t.Fatal("fetch without a daemon succeeded")
	}
}

func TestStatusSocketReplacesStaleFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gw.sock")
	if err := os.WriteFile(path, nil, 0o600); err != nil { // a stale leftover (e.g. after SIGKILL)
		t.Fatal(err)
	}
	s, err := ServeStatus(path, func() (any, error) { return nil, errors.New("not ready") }, nil)
	if err != nil {
		t.Fatalf("stale socket file not replaced: %v", err)
	}
	defer s.Close()
	if _, err := FetchStatus(context.Background(), path); err == nil {
		t.Fatal("error from the status function not reported")
	}
}

// A relayed connection's status names the relay carrying its path, which is the peer's when our end is
// direct, not the relay sampled for the connection.
func TestConnectionStatusNamesThePathRelay(t *testing.T) {
	st := ConnectionStatuses([]node.ConnStats{
		{ID: "relayed", Path: node.PathRelay, RelayID: "ours", PathRelayID: "peers", Established: true},
		{ID: "direct", Path: node.PathServerReflexive, RelayID: "ours", Established: true},
	})
	if st[0].RelayID != "peers" || st[0].Direct {
		t.Fatalf("relayed: %+v, want relay_id peers", st[0])
	}
	if st[1].RelayID != "" || !st[1].Direct {
		t.Fatalf("direct: %+v, want no relay_id", st[1])
	}
}
