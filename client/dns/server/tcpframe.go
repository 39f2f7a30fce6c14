package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrMessageTooLong is returned for a DNS message that does not fit a DNS-over-TCP frame (65535 bytes), or
// the buffer it is to be read into.
var ErrMessageTooLong = errors.New("DNS message too long for its DNS-over-TCP frame or buffer")

// ReadTCPMessage reads one DNS-over-TCP message (RFC 1035 §4.2.2, RFC 7766 §8: a two-byte length, then the
// message) from r into buf and returns buf[:length]. A buf of 65535 bytes holds any message; a message
// longer than buf fails with ErrMessageTooLong (the stream is then out of step: close it). A stream that
// ends cleanly between messages returns io.EOF; one that ends inside a message io.ErrUnexpectedEOF.
func ReadTCPMessage(r io.Reader, buf []byte) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > len(buf) {
		return nil, fmt.Errorf("%w: %d bytes, buffer %d", ErrMessageTooLong, n, len(buf))
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf[:n], nil
}

// WriteTCPMessage writes msg to w as one DNS-over-TCP frame (a two-byte length, then the message) in a
// single Write call, so that writers serialised by the caller never interleave frames on a connection where
// answers go out in any order (RFC 7766 §7: pipelined queries). A message over 65535 bytes fails with
// ErrMessageTooLong.
func WriteTCPMessage(w io.Writer, msg []byte) error {
	if len(msg) > 0xFFFF {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLong, len(msg))
	}
	frame := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(frame, uint16(len(msg)))
	copy(frame[2:], msg)
	_, err := w.Write(frame)
	return err
}
