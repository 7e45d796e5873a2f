// info: the definitions (saga types with their versions and files, and every file with its load
// error) and the circuit breakers of the services the sagas call.
import { api } from './api.js';
import { h, clear, fmtDuration, fmtTime, throttle } from './dom.js';

function table(id, head, rows) {
  return h('table', { class: 'grid-table', id }, h('thead', null, h('tr', null, head.map((t) => h('th', null, t)))),
    h('tbody', null, rows));
}

// a view that shows one GET, again on events (when `live` says so) and on a timer (every `every` ms)
function mountInfo(root, path, draw, { live = () => false, every = 0 } = {}) {
  const body = h('div', null, h('p', { class: 'muted' }, 'loading…'));
  root.append(body);
  let seq = 0;
  async function load() {
    const my = ++seq;
    try {
      const d = await api(path);
      if (my === seq) clear(body, draw(d));
    } catch (e) {
      if (my === seq) clear(body, h('p', { class: 'error-box' }, `Cannot load ${path}: ${e.message}`));
    }
  }
  const soon = throttle(load, 500);
  const timer = every ? setInterval(load, every) : null;
  load();
  return {
    onEvent(ev) { if (live(ev)) soon(); },
    poll: load,
    unmount() { if (timer) clearInterval(timer); seq++; },
  };
}

export function mountDefinitions(root, app) {
  root.append(h('h1', null, 'Definitions'));
  return mountInfo(root, 'v1/definitions', (d) => {
    const files = d.files || [];
    const bad = files.filter((f) => !f.ok);
    return [
      bad.length ? h('p', { class: 'error-box' }, `${bad.length} file(s) failed to load; their last good version (if any) stays in use.`) : null,
      h('section', { class: 'card' }, h('h2', null, 'Saga types'),
        (d.definitions || []).length ? table('types', ['Type', 'Version', 'File', 'Steps'], (d.definitions || []).map((t) =>
          h('tr', { dataset: { type: t.type } }, h('td', null, h('a', { href: `#/?type=${encodeURIComponent(t.type)}` }, t.type)),
            h('td', { class: 'mono', title: t.version }, (t.version || '').slice(0, 16)), h('td', { class: 'mono' }, t.file),
            h('td', null, (t.steps || []).join(' → ')))))
          : h('p', { class: 'muted' }, 'No saga type is loaded.')),
      h('section', { class: 'card' }, h('h2', null, 'Files'),
        table('files', ['File', 'Version', 'Status'], files.map((f) =>
          h('tr', { class: f.ok ? '' : 'bad', dataset: { file: f.file } }, h('td', { class: 'mono' }, f.file),
            h('td', { class: 'mono', title: f.version || '' }, (f.version || '').slice(0, 16)),
            h('td', null, f.ok ? h('span', { class: 'ok' }, 'loaded') : h('span', { class: 'load-error' }, f.error)))))),
      (d.services || []).length ? h('section', { class: 'card' }, h('h2', null, 'Services handled here'),
        h('p', null, (d.services || []).join(', '))) : null,
    ];
  }, { live: (ev) => ev.kind === 'definition_loaded' || ev.kind === 'definition_failed', every: 10000 });
}

export function mountBreakers(root, app) {
  root.append(h('h1', null, 'Circuit breakers'));
  return mountInfo(root, 'v1/breakers', (d) => [
    h('section', { class: 'card' },
      (d.breakers || []).length ? table('breakers', ['Service', 'State', 'Calls', 'Failures', 'Parked sagas', 'Opened', 'Since'],
        (d.breakers || []).map((b) => h('tr', { dataset: { service: b.service } }, h('td', null, b.service),
          h('td', null, h('span', { class: `badge br-${b.state}` }, b.state.replace('_', ' '))),
          h('td', null, b.calls), h('td', null, b.failures), h('td', null, b.parked), h('td', null, b.opens),
          h('td', null, b.opened_at ? fmtTime(b.opened_at) : ''))))
        : h('p', { class: 'muted' }, 'No service has been called yet.'),
      h('p', { class: 'muted' }, `A breaker opens when at least ${d.min_calls} calls in ${fmtDuration(d.window_ms)} `,
        `fail at a rate of ${d.failure_rate} or more (0 = off), and stays open ${fmtDuration(d.open_ms)} before a probe.`)),
  ], { live: (ev) => ev.kind === 'attempt_ended', every: 2000 });
}
