package relay

import "log/slog"

// StatsAttrs returns the fields of the relay's periodic INFO stats line (see telemetry.StatsLoop): the gauges
// now and the relayed totals since start.
func (s *Server) StatsAttrs() []slog.Attr {
	t := s.stats.traffic()
	k := s.stats.kernelTotals()
	kernelChannels := 0
	if kp := s.stats.kernel.Load(); kp != nil {
		kernelChannels = kp.Status().Bindings
	}
	return []slog.Attr{
		slog.Int64("allocations_ipv4", s.stats.allocations4.Load()),
		slog.Int64("allocations_ipv6", s.stats.allocations6.Load()),
		slog.Int64("channels", s.stats.channels.Load()),
		slog.Int64("permissions", s.stats.permissions.Load()),
		slog.Uint64("packets_to_peers", t.toPeerPackets),
		slog.Uint64("bytes_to_peers", t.toPeerBytes),
		slog.Uint64("packets_to_clients", t.toClientPackets),
		slog.Uint64("bytes_to_clients", t.toClientBytes),
		slog.Uint64("refused_peers", s.stats.refusedPeers.Load()),
		slog.Int("kernel_channels", kernelChannels),
		slog.Uint64("kernel_packets", k.ToPeerPackets+k.ToClientPackets),
		slog.Bool("ready", s.Ready()),
	}
}
