package phoenix

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestDecodeTable(t *testing.T) {
	tests := []struct {
		name    string
		v       Version
		in      string
		want    Message
		wantErr bool
	}{
		{"v1 firezone join", V1, `{"topic":"client","event":"phx_join","payload":null,"ref":0}`,
			Message{Topic: "client", Event: "phx_join", Payload: json.RawMessage("null"), Ref: IntRef(0)}, false},
		{"v1 string ref and unknown field", V1, `{"topic":"t","event":"e","payload":{},"ref":"7","x":1}`,
			Message{Topic: "t", Event: "e", Payload: json.RawMessage("{}"), Ref: Ref{Value: "7"}}, false},
		{"v2 js join", V2, `["1","1","client","phx_join",{}]`,
			Message{JoinRef: Ref{Value: "1"}, Ref: Ref{Value: "1"}, Topic: "client", Event: "phx_join", Payload: json.RawMessage("{}")}, false},
		{"v2 push without refs", V2, `[null,null,"client","init",{"a":1}]`,
			Message{Topic: "client", Event: "init", Payload: json.RawMessage(`{"a":1}`)}, false},
		{"v1 missing topic", V1, `{"event":"e","payload":{}}`, Message{}, true},
		{"v1 array", V1, `["1","1","t","e",{}]`, Message{}, true},
		{"v2 short", V2, `["1","t","e",{}]`, Message{}, true},
		{"v2 object", V2, `{"topic":"t"}`, Message{}, true},
		{"v1 negative ref", V1, `{"topic":"t","event":"e","payload":{},"ref":-1}`, Message{}, true},
		{"garbage", V1, `{{`, Message{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.v, []byte(tt.in))
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Decode(%s) err = %v, want ErrMalformed", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%s): %v", tt.in, err)
			}
			if got.Topic != tt.want.Topic || got.Event != tt.want.Event || got.Ref != tt.want.Ref ||
				got.JoinRef != tt.want.JoinRef || string(got.Payload) != string(tt.want.Payload) {
				t.Fatalf("Decode(%s) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestRoundTripKeepsRefForm(t *testing.T) {
	for _, v := range []Version{V1, V2} {
		for _, ref := range []Ref{IntRef(42), {Value: "42"}, {}} {
			m := Message{JoinRef: ref, Ref: ref, Topic: "gateway", Event: "x", Payload: json.RawMessage(`{"k":"v"}`)}
			b, err := Encode(v, m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(v, b)
			if err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			if got.Ref != ref || got.JoinRef != ref || got.Topic != m.Topic || string(got.Payload) != string(m.Payload) {
				t.Fatalf("v%d round trip %s = %+v", v, b, got)
			}
		}
	}
}

func TestNewReplyEchoesRefs(t *testing.T) {
	req := Message{JoinRef: IntRef(3), Ref: IntRef(4), Topic: "client", Event: EventJoin}
	rep, err := NewReply(req, StatusOK, map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Encode(V1, rep)
	want := `{"topic":"client","event":"phx_reply","payload":{"status":"ok","response":{"a":"b"}},"ref":4,"join_ref":3}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{"": V1, "1.0.0": V1, "2.0.0": V2} {
		if got, err := ParseVersion(in); err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseVersion("3.0.0"); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("ParseVersion(3.0.0) err = %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"topic":"client","event":"phx_join","payload":null,"ref":0}`), true)
	f.Add([]byte(`["1","1","client","phx_join",{}]`), false)
	f.Fuzz(func(t *testing.T, data []byte, v1 bool) {
		v := V2
		if v1 {
			v = V1
		}
		m, err := Decode(v, data)
		if err != nil {
			return
		}
		b, err := Encode(v, m)
		if err != nil {
			t.Fatalf("re-encode of decoded %q: %v", data, err)
		}
		if _, err := Decode(v, b); err != nil {
			t.Fatalf("decode of re-encoded %q: %v", b, err)
		}
	})
}
