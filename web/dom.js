// dom: building elements without innerHTML (everything shown comes from the API: text, never markup),
// and the formatting every view shares.

// h('a', {href: '#/', class: 'x', onclick: f}, 'text', child, [more]) -> an element.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// empties el, then appends children (as h() does: arrays flattened, null and false left out)
export function clear(el, ...children) {
  while (el.firstChild) el.firstChild.remove();
  return append(el, children);
}

export const STATUSES = ['running', 'compensating', 'completed', 'compensated', 'compensation_failed', 'resolved', 'terminated'];
export const TERMINAL = new Set(['completed', 'compensated', 'compensation_failed', 'resolved', 'terminated']);

export function statusBadge(status) {
  return h('span', { class: `badge st-${status || 'unknown'}`, 'data-status': status || '' },
    (status || '?').replace('_', ' '));
}

export function ms(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? null : t;
}

export function fmtTime(iso) {
  const t = ms(iso);
  if (t == null) return '';
  const d = new Date(t);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

export function fmtDuration(n) {
  if (n == null || Number.isNaN(n)) return '';
  if (n < 0) n = 0;
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 60000) return `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
  if (n < 3600000) return `${Math.floor(n / 60000)} min ${Math.round((n % 60000) / 1000)} s`;
  return `${Math.floor(n / 3600000)} h ${Math.round((n % 3600000) / 60000)} min`;
}

export function fmtAgo(iso) {
  const t = ms(iso);
  if (t == null) return '';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function shortId(id) {
  return id && id.length > 13 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id || '';
}

export function pretty(value) {
  return h('pre', { class: 'json' }, value === undefined ? '' : JSON.stringify(value, null, 2));
}

// f() at most once every `wait` ms; a call meanwhile runs once the wait is over (never lost).
export function throttle(f, wait) {
  let last = 0, timer = null;
  return function throttled() {
    if (timer) return;
    const due = last + wait - Date.now();
    const run = () => { timer = null; last = Date.now(); f(); };
    if (due <= 0) run();
    else timer = setTimeout(run, due);
  };
}

let toastBox = null;
export function toast(text, kind = 'info') {
  toastBox = toastBox || document.getElementById('toasts');
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  toastBox.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}
