package server

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestTCPFraming: messages round-trip through WriteTCPMessage and ReadTCPMessage, one Write per frame; a
// clean end between messages is io.EOF, an end inside one io.ErrUnexpectedEOF; a message longer than the
// buffer, or than a frame, is ErrMessageTooLong.
func TestTCPFraming(t *testing.T) {
	var w countingWriter
	msgs := [][]byte{[]byte("query one"), {}, bytes.Repeat([]byte{7}, 0xFFFF)}
	for _, m := range msgs {
		if err := WriteTCPMessage(&w, m); err != nil {
			t.Fatal(err)
		}
	}
	if w.writes != len(msgs) {
		t.Errorf("%d writes for %d messages", w.writes, len(msgs))
	}
	r := bytes.NewReader(w.buf.Bytes())
	buf := make([]byte, 0xFFFF)
	for i, want := range msgs {
		got, err := ReadTCPMessage(r, buf)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("message %d: %d bytes, %v", i, len(got), err)
		}
	}
	if _, err := ReadTCPMessage(r, buf); !errors.Is(err, io.EOF) {
		t.Errorf("clean end: %v, want io.EOF", err)
	}
	for _, cut := range [][]byte{{0}, {0, 5, 'a', 'b'}} {
		if _, err := ReadTCPMessage(bytes.NewReader(cut), buf); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("cut frame % x: %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
	if _, err := ReadTCPMessage(bytes.NewReader([]byte{0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9}), make([]byte, 8)); !errors.Is(err, ErrMessageTooLong) {
		t.Errorf("message longer than the buffer: %v", err)
	}
	if err := WriteTCPMessage(&w, make([]byte, 0x10000)); !errors.Is(err, ErrMessageTooLong) {
		t.Errorf("message longer than a frame: %v", err)
	}
}

type countingWriter struct {
	buf    bytes.Buffer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.buf.Write(p)
}

// FuzzReadTCPMessage: any byte stream is read as frames or fails cleanly, never panicking; what is read
// writes back as the same bytes.
func FuzzReadTCPMessage(f *testing.F) {
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 0})
	f.Add([]byte{0xFF, 0xFF, 1})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		buf := make([]byte, 512)
		var out bytes.Buffer
		consumed := 0
		for {
			m, err := ReadTCPMessage(r, buf)
			if err != nil {
				break
			}
			consumed = len(data) - r.Len()
			if err := WriteTCPMessage(&out, m); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(out.Bytes(), data[:consumed]) {
			t.Fatalf("frames read back as % x, want % x", out.Bytes(), data[:consumed])
		}
	})
}
