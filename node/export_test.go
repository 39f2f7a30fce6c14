package node

// Internals for the tests of package node_test (which run real nodes in
// node/nodetest's simulated World).

// LiveAgents returns how many ICE agents n has created and not yet closed.
func LiveAgents(n *Node) int64 { return n.liveAgents.Load() }

// AgentRunning reports whether connection id has an ICE run going (its
// core wants an agent, whether or not the agent was created yet).
func AgentRunning(n *Node, id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.conns[id]
	if c == nil {
		return false
	}
	_, running := c.sm.Agent()
	return running
}

// HasAgent reports whether connection id holds a live ICE agent (running
// or in its grace period).
func HasAgent(n *Node, id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.conns[id]
	return c != nil && c.agent != nil
}

// RotateSockets re-binds n's sockets to a new port, as a NAT that remaps
// its mapping looks to the peer.
func RotateSockets(n *Node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rotateIOLocked()
}

// Given returns how many ICE agents n created and how many server-reflexive
// and relay candidates it gave them.
func Given(n *Node) (agents, srflx, relay uint64) {
	return n.given.agents.Load(), n.given.srflx.Load(), n.given.relay.Load()
}

// AgentStarted reports whether connection id's current ICE run has its
// agent (created, not waiting for the previous one to close).
func AgentStarted(n *Node, id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.conns[id]
	if c == nil {
		return false
	}
	gen, running := c.sm.Agent()
	return running && c.agent != nil && c.agentGen == gen
}
