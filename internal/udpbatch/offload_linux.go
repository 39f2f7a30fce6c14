//go:build linux

package udpbatch

import (
	"encoding/binary"
	"errors"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// enableOffload reports whether the socket can send with UDP_SEGMENT and turns on UDP_GRO
// (reporting whether that worked), as wireguard-go's StdNetBind does.
func enableOffload(uc *net.UDPConn) (gso, gro bool) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return false, false
	}
	_ = rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		gso = err == nil
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil {
			v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO)
			gro = err == nil && v == 1
		}
	})
	return gso, gro
}

// gsoControlSize is the room a UDP_SEGMENT (or UDP_GRO) control message needs.
var gsoControlSize = unix.CmsgSpace(2)

// putGSO writes a UDP_SEGMENT control message for segments of size into oob (len gsoControlSize)
// and returns it.
func putGSO(oob []byte, size int) []byte {
	oob = oob[:gsoControlSize]
	clear(oob)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	return oob
}

// groSize returns the segment size of a UDP_GRO control message in oob (0: not coalesced).
func groSize(oob []byte) int {
	for len(oob) > unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 2 {
			return int(binary.NativeEndian.Uint16(data))
		}
		oob = rest
	}
	return 0
}

// gsoRefused reports whether a send error means the path cannot take UDP_SEGMENT sends (a device
// without checksum offload: EIO; a kernel that refuses the segment count or size: EINVAL), so
// the datagrams go out one by one instead and GSO stays off.
func gsoRefused(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL)
}

// gsoTooBig reports whether a GSO send was refused for its size (EMSGSIZE below a path MTU): that
// batch goes out one by one, GSO stays on.
func gsoTooBig(err error) bool { return errors.Is(err, unix.EMSGSIZE) }
