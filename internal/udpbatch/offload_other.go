//go:build !linux

package udpbatch

import "net"

// enableOffload: UDP GSO and GRO are Linux features.
func enableOffload(*net.UDPConn) (gso, gro bool) { return false, false }

var gsoControlSize = 0

func putGSO(oob []byte, _ int) []byte { return oob[:0] }
func groSize([]byte) int              { return 0 }
func gsoRefused(error) bool           { return false }
func gsoTooBig(error) bool            { return false }
