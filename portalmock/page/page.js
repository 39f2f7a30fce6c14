// snowgate portal: the live page. It reads the portal's state from /events (server-sent events, one "state"
// event with the whole picture after every change) and redraws. Every name comes from the configuration or
// from peers, so text only ever enters the page as text nodes and attribute values: never as markup.
'use strict';
(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const token = new URLSearchParams(location.search).get('token') || '';
  const $ = (id) => document.getElementById(id);
  // Relay names seen so far: a report may still name a relay after it left the portal.
  const relayNames = new Map();
  let updates = 0;

  // node builds an element in namespace ns: attrs are set as attributes, strings among kids as text.
  function node(ns, tag, attrs, kids) {
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
    }
    for (const k of kids || []) {
      if (k === null || k === undefined || k === false) continue;
      e.appendChild(typeof k === 'string' || typeof k === 'number' ? document.createTextNode(String(k)) : k);
    }
    return e;
  }
  const h = (tag, attrs, ...kids) => node(null, tag, attrs, kids);
  const s = (tag, attrs, ...kids) => node(SVG, tag, attrs, kids);

  function setStatus(cls, text) {
    const st = $('status');
    st.className = 'status ' + cls;
    st.textContent = text;
  }

  function table(id, head, rows, empty) {
    const t = $(id);
    t.replaceChildren(h('thead', {}, h('tr', {}, ...head.map((c) => h('th', {}, c)))));
    const body = h('tbody');
    if (rows.length === 0) {
      body.appendChild(h('tr', {}, h('td', { class: 'empty', colspan: head.length }, empty)));
    }
    for (const r of rows) {
      body.appendChild(h('tr', {}, ...r.map((c) => (c instanceof Node ? h('td', {}, c) : h('td', typeof c === 'number' ? { class: 'num' } : {}, c)))));
    }
    t.appendChild(body);
  }

  const ms = (v) => (v > 0 ? (v < 10 ? v.toFixed(2) : v.toFixed(1)) + ' ms' : '');
  function bytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
    return (n / (1 << 20)).toFixed(1) + ' MiB';
  }
  function relayName(id) {
    return relayNames.get(id) || 'relay ' + id.slice(0, 8);
  }

  // links pairs every client and gateway that share a flow or a reported connection, with both sides'
  // reports of it (cr: the client's, gr: the gateway's).
  function links(st) {
    const pairs = new Map();
    const pair = (c, g) => {
      const k = c + '\n' + g;
      if (!pairs.has(k)) pairs.set(k, { client: c, gateway: g, cr: null, gr: null, flow: null });
      return pairs.get(k);
    };
    for (const f of st.flows) pair(f.client_id, f.gateway_id).flow = f;
    for (const c of st.clients) for (const r of c.connections) pair(c.id, r.peer_id).cr = r;
    for (const g of st.gateways) for (const r of g.connections) pair(r.peer_id, g.id).gr = r;
    return [...pairs.values()];
  }

  // describe says how a pair's connection goes: kind "direct" (host or srflx), "relay" (relays: the
  // relays on the path, the client's first), "none" (reported, no path yet) or "flow" (nobody reported).
  function describe(p) {
    const reps = [p.cr, p.gr].filter(Boolean);
    const up = reps.filter((r) => r.path !== 'none');
    const rtt = (p.cr && p.cr.rtt_ms) || (p.gr && p.gr.rtt_ms) || 0;
    const idle = up.length > 0 && up.every((r) => r.idle);
    if (up.length === 0) return { kind: reps.length ? 'none' : 'flow', relays: [], rtt: 0, idle: false };
    if (!up.some((r) => r.path === 'relay')) return { kind: 'direct', sub: up[0].path, relays: [], rtt, idle };
    const relays = [];
    for (const r of up) if (r.path === 'relay' && r.relay_id && !relays.includes(r.relay_id)) relays.push(r.relay_id);
    return { kind: 'relay', relays, rtt, idle };
  }

  function label(d) {
    let t;
    switch (d.kind) {
      case 'direct': t = 'direct (' + d.sub + ')'; break;
      case 'relay': t = d.relays.length ? 'via ' + d.relays.map(relayName).join(' → ') : "via the peer's relay"; break;
      case 'none': t = 'connecting…'; break;
      default: t = 'flow, no path reported';
    }
    if (d.rtt) t += ' · ' + ms(d.rtt);
    if (d.idle) t += ' · idle';
    return t;
  }

  const W = 1000, BOX_W = 190, BOX_H = 50, STEP = 74, TOP = 56;
  const X = { client: 130, relay: 500, gateway: 860 };

  function box(kind, x, y, attrs, name, detail, tip) {
    return s('g', Object.assign({ class: 'node ' + kind, transform: 'translate(' + (x - BOX_W / 2) + ',' + (y - BOX_H / 2) + ')' }, attrs),
      s('title', {}, tip),
      s('rect', { width: BOX_W, height: BOX_H, rx: 8 }),
      s('text', { class: 'name', x: 12, y: 21 }, name),
      s('text', { class: 'detail', x: 12, y: 38 }, detail));
  }

  function drawTopology(st, pairs) {
    const svg = $('topology');
    const pos = new Map(); // "kind:id" → y
    const layers = { sites: s('g'), links: s('g'), nodes: s('g') };

    // Clients.
    st.clients.forEach((c, i) => {
      const y = TOP + 30 + i * STEP;
      pos.set('client:' + c.id, y);
      layers.nodes.appendChild(box('client', X.client, y, { 'data-id': c.id, 'data-name': c.name, 'data-online': c.online },
        c.name, (c.online ? 'online' : 'offline') + ' · ' + c.ipv4, c.id));
    });

    // Relays: the online ones, then those a report still names although they left.
    const relays = st.relays.map((r) => ({ id: r.id, name: r.name, addr: r.addr4 || r.addr6 || '', gone: false }));
    for (const p of pairs) {
      for (const id of describe(p).relays) {
        if (!relays.some((r) => r.id === id)) relays.push({ id, name: relayName(id), addr: '', gone: true });
      }
    }
    relays.forEach((r, i) => {
      const y = TOP + 30 + i * STEP;
      pos.set('relay:' + r.id, y);
      layers.nodes.appendChild(box('relay' + (r.gone ? ' gone' : ''), X.relay, y,
        { 'data-id': r.id, 'data-name': r.name, 'data-online': !r.gone },
        r.name + (r.gone ? ' (gone)' : ''), r.gone ? 'left the portal' : 'online · ' + r.addr, r.id));
    });

    // Sites with their gateways.
    const siteName = new Map(st.sites.map((x) => [x.id, x.name]));
    const order = [...st.sites.map((x) => x.id), ''];
    let y = TOP + 4;
    for (const sid of order) {
      const gws = st.gateways.filter((g) => (sid === '' ? !siteName.has(g.site) : g.site === sid));
      if (gws.length === 0 && sid === '') continue;
      const top = y;
      y += 26;
      gws.forEach((g) => {
        const gy = y + BOX_H / 2;
        pos.set('gateway:' + g.id, gy);
        layers.nodes.appendChild(box('gateway', X.gateway, gy, { 'data-id': g.id, 'data-name': g.name, 'data-site': g.site || '', 'data-online': g.online },
          g.name, (g.online ? 'online' : 'offline') + ' · ' + g.ipv4, g.id));
        y += STEP;
      });
      if (gws.length === 0) y += 10;
      layers.sites.appendChild(s('g', { class: 'site', 'data-id': sid },
        s('rect', { x: X.gateway - BOX_W / 2 - 12, y: top, width: BOX_W + 24, height: y - top - 6, rx: 10 }),
        s('text', { class: 'name', x: X.gateway - BOX_W / 2 - 2, y: top + 17 }, sid ? 'site ' + siteName.get(sid) : 'no site')));
      y += 10;
    }

    // Connections.
    const right = (x) => x + BOX_W / 2, left = (x) => x - BOX_W / 2;
    for (const p of pairs) {
      const cy = pos.get('client:' + p.client), gy = pos.get('gateway:' + p.gateway);
      if (cy === undefined || gy === undefined) continue;
      const d = describe(p);
      const gone = d.relays.some((id) => !st.relays.some((r) => r.id === id));
      let path = 'M' + right(X.client) + ',' + cy;
      let lx = (right(X.client) + left(X.gateway)) / 2, ly = (cy + gy) / 2;
      if (d.relays.length) {
        const ys = d.relays.map((id) => pos.get('relay:' + id));
        path += ' L' + left(X.relay) + ',' + ys[0];
        lx = (right(X.client) + left(X.relay)) / 2;
        ly = (cy + ys[0]) / 2;
        for (let i = 1; i < ys.length; i++) { // relay to relay: the path crosses from one allocation to the other
          path += ' C' + (right(X.relay) + 60) + ',' + ys[i - 1] + ' ' + (right(X.relay) + 60) + ',' + ys[i] + ' ' + right(X.relay) + ',' + ys[i];
        }
        path += ' M' + right(X.relay) + ',' + ys[ys.length - 1];
      }
      path += ' L' + left(X.gateway) + ',' + gy;
      layers.links.appendChild(s('g', {
        class: 'link' + (gone ? ' via-gone' : '') + (d.idle ? ' idle' : ''),
        'data-client': p.client, 'data-gateway': p.gateway, 'data-kind': d.kind,
        'data-path': (p.cr && p.cr.path) || (p.gr && p.gr.path) || 'none',
        'data-relays': d.relays.join(' '), 'data-relay-names': d.relays.map(relayName).join(' '),
        'data-rtt-ms': d.rtt,
      }, s('path', { d: path }), s('text', { class: 'label', x: lx, y: ly - 6, 'text-anchor': 'middle' }, label(d))));
    }

    const rows = Math.max(st.clients.length, relays.length, 1);
    const height = Math.max(TOP + 30 + rows * STEP, y + 10);
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + height);
    svg.replaceChildren(
      s('text', { class: 'col-title', x: X.client, y: 26, 'text-anchor': 'middle' }, 'clients'),
      s('text', { class: 'col-title', x: X.relay, y: 26, 'text-anchor': 'middle' }, 'relays'),
      s('text', { class: 'col-title', x: X.gateway, y: 26, 'text-anchor': 'middle' }, 'sites and gateways'),
      layers.sites, layers.links, layers.nodes);
  }

  function render(st) {
    for (const r of st.relays) relayNames.set(r.id, r.name);
    const clientName = new Map(st.clients.map((c) => [c.id, c.name]));
    const gatewayName = new Map(st.gateways.map((g) => [g.id, g.name]));
    const resourceName = new Map(st.resources.map((r) => [r.id, r.name]));
    const siteName = new Map(st.sites.map((x) => [x.id, x.name]));
    const pairs = links(st);
    drawTopology(st, pairs);

    const conns = [];
    for (const [kind, peers, names] of [['client', st.clients, gatewayName], ['gateway', st.gateways, clientName]]) {
      for (const p of peers) {
        for (const r of p.connections) {
          conns.push([p.name + ' (' + kind + ')', names.get(r.peer_id) || r.peer_id, r.path,
            r.path === 'relay' ? (r.relay_id ? relayName(r.relay_id) : "the peer's") : '',
            h('span', { class: 'mono' }, r.local || ''), h('span', { class: 'mono' }, r.remote || ''),
            ms(r.rtt_ms), bytes(r.rx_bytes), bytes(r.tx_bytes), r.idle ? 'idle' : 'active']);
        }
      }
    }
    table('connections', ['reported by', 'peer', 'path', 'relay', 'local', 'remote', 'rtt', 'rx', 'tx', ''], conns, 'no connections reported');
    table('flows', ['client', 'gateway', 'resources'], st.flows.map((f) => [clientName.get(f.client_id) || f.client_id,
      gatewayName.get(f.gateway_id) || f.gateway_id, f.resource_ids.map((id) => resourceName.get(id) || id).join(', ')]), 'no flows');
    table('sites', ['site', 'account', 'gateways'], st.sites.map((x) => [x.name, x.account,
      st.gateways.filter((g) => g.site === x.id).map((g) => g.name + (g.online ? '' : ' (offline)')).join(', ')]), 'no sites');
    table('resources', ['resource', 'type', 'address', 'sites'], st.resources.map((r) => [r.name, r.type,
      h('span', { class: 'mono' }, r.address || ''), (r.sites || []).map((id) => siteName.get(id) || id).join(', ')]), 'no resources');
    table('policies', ['client', 'may reach'], st.policies.map((p) => [p.client_name, p.resource_name]), 'no policies');

    const online = (xs) => xs.filter((x) => x.online).length;
    const plural = (n, w) => n + ' ' + w + (n === 1 ? '' : 's');
    $('summary').textContent = [plural(online(st.clients), 'client'), plural(online(st.gateways), 'gateway'),
      plural(st.relays.length, 'relay')].join(' · ') + ' online · ' + plural(st.flows.length, 'flow');
    updates++;
    document.body.dataset.updates = String(updates);
  }

  function connect() {
    const es = new EventSource('/events' + (token ? '?token=' + encodeURIComponent(token) : ''));
    es.addEventListener('state', (ev) => {
      let st;
      try {
        st = JSON.parse(ev.data);
      } catch (e) {
        setStatus('error', 'the portal sent a state the page cannot read');
        return;
      }
      render(st);
      setStatus('live', 'live · updated ' + new Date().toLocaleTimeString());
    });
    es.addEventListener('error', () => {
      if (es.readyState === EventSource.CLOSED) {
        setStatus('error', token ? 'the portal refused the stream (wrong admin token?)' : 'open this page with ?token=<admin token>');
      } else {
        setStatus('connecting', 'portal unreachable; reconnecting…');
      }
    });
  }
  connect();
})();
