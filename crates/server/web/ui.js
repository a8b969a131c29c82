// Shared page helpers: the connection indicator and small DOM utilities. Plain ES module.

/** Builds the text of a connection state, e.g. "reconnecting — attempt 2 of 10, next try in 3 s". */
export function describeState(s, now = Date.now()) {
  switch (s.state) {
    case 'connected':
      return `connected${s.node ? ` to ${s.node}` : ''}`;
    case 'connecting':
      return 'connecting…';
    case 'resyncing':
      return `resyncing${s.pending ? ` (${s.pending} channel${s.pending === 1 ? '' : 's'})` : ''}…`;
    case 'reconnecting': {
      const secs = Math.max(0, Math.ceil((s.nextTryAt - now) / 1000));
      const next = s.nextTryAt > now ? `next try in ${secs} s` : 'trying now';
      return `reconnecting — attempt ${s.attempt} of ${s.maxAttempts}, ${next}`;
    }
    case 'offline':
      return `offline (${s.reason}${s.code ? `, ${s.code}` : ''})`;
    default:
      return s.state;
  }
}

/**
 * Binds a connection indicator element to a client: sets `data-herald-state` to the state name and
 * keeps the text (with the countdown) current. Shows a "retry now" button when offline or waiting.
 */
export function bindIndicator(el, client) {
  el.classList.add('herald-indicator');
  el.innerHTML = '<span class="dot"></span><span class="text"></span><button type="button" class="retry" hidden>retry now</button>';
  const text = el.querySelector('.text');
  const retry = el.querySelector('.retry');
  retry.addEventListener('click', () => client.reconnect());
  let timer;
  const render = () => {
    const s = client.state;
    el.dataset.heraldState = s.state;
    if (s.state === 'reconnecting') {
      el.dataset.attempt = String(s.attempt);
      el.dataset.maxAttempts = String(s.maxAttempts);
    } else {
      delete el.dataset.attempt;
      delete el.dataset.maxAttempts;
    }
    text.textContent = describeState(s);
    retry.hidden = !(s.state === 'reconnecting' || s.state === 'offline');
    clearInterval(timer);
    timer = undefined;
    if (s.state === 'reconnecting') timer = setInterval(() => (text.textContent = describeState(client.state)), 250);
  };
  render();
  return client.on('state', render);
}

/** Creates an element: h('li', {class: 'x', dataset: {k: 'v'}}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function fmtTime(iso) {
  try {
    return new Date(iso).toLocaleTimeString([], { hour12: false }) + '.' + String(new Date(iso).getMilliseconds()).padStart(3, '0');
  } catch {
    return iso;
  }
}

/** `?backoff_max_ms=N` caps the reconnect delay (default 30 s): handy for demos and tests. */
export function backoffFromQuery(params) {
  const cap = Number(params.get('backoff_max_ms'));
  if (!Number.isFinite(cap) || cap <= 0) return undefined;
  return { maxMs: cap, initialMs: Math.min(1000, cap) };
}
