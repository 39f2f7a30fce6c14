package netlab

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtoolSetTxCsum is the legacy ETHTOOL_STXCSUM ioctl command (include/uapi/linux/ethtool.h), still
// served by every kernel and enough to flip one offload without the ethtool binary.
const ethtoolSetTxCsum = 0x17

// SetTxChecksumOffload turns the transmit checksum offload of the node's end of the link on or off.
// Off, the datagrams that the node's sockets send carry complete UDP/TCP checksums, as datagrams
// from a physical network do; on (the veth default), they carry only the pseudo-header sum for the
// "device" to complete, which an XDP program on the receiving side sees as it is.
func (lk *Link) SetTxChecksumOffload(on bool) error {
	return lk.nodeNS.ethtool(lk.nodeDev, ethtoolSetTxCsum, on)
}

// BridgeEnd returns the namespace and name of the link's other end, the port of the network's
// bridge. Tests of XDP programs on a node need it: a veth delivers the frames an XDP program on
// the node's end sends back (XDP_TX) only if this end runs an XDP program too (with GRO alone,
// Linux 6.18 queues them and does not wake the receiver; see internal/xdppass).
func (lk *Link) BridgeEnd() (*Namespace, string) { return lk.netNS, lk.bridgeIf }

// ethtool sets a boolean ethtool value of dev inside the namespace.
func (n *Namespace) ethtool(dev string, cmd uint32, on bool) error {
	err := n.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		val := struct{ cmd, data uint32 }{cmd: cmd}
		if on {
			val.data = 1
		}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte // the rest of struct ifreq's union
		}
		copy(ifr.name[:], dev)
		ifr.data = unsafe.Pointer(&val)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
		runtime.KeepAlive(&val)
		if errno != 0 {
			return errno
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("netlab: %s: ethtool %#x on %s: %w", n.node, cmd, dev, err)
	}
	return nil
}
