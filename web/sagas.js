// sagas: the list. Filters by type and status, a search by saga id or business key, newest first,
// "Load more" through the cursor. Live: a row changes status as events come, and the page is asked
// again (at most every 500 ms) so that new sagas appear. The filters live in the address (#/?type=..)
// so a filtered list can be bookmarked.
import { api, apiOrNull, ApiError } from './api.js';
import { h, clear, fmtAgo, fmtTime, shortId, statusBadge, STATUSES, throttle } from './dom.js';

const PAGE = 50;

export function mountSagas(root, app, params) {
  const f = { type: params.get('type') || '', status: params.get('status') || '', q: params.get('q') || '' };
  const rows = new Map(); // saga id -> {tr, cells, saga}
  let shown = PAGE, next = null, seq = 0, loadedOnce = false;

  const search = h('input', { type: 'search', id: 'search', placeholder: 'saga id or business key', value: f.q, maxlength: 200,
    'aria-label': 'search by saga id or business key', spellcheck: 'false' });
  const typeSel = h('select', { id: 'filter-type', 'aria-label': 'saga type' });
  const statusSel = h('select', { id: 'filter-status', 'aria-label': 'status' },
    h('option', { value: '' }, 'any status'), STATUSES.map((s) => h('option', { value: s }, s.replace('_', ' '))));
  statusSel.value = f.status;
  const clearBtn = h('button', { class: 'btn', type: 'button', id: 'filter-clear' }, 'Clear');
  const tbody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true });
  const more = h('button', { class: 'btn', id: 'load-more', type: 'button', hidden: true }, 'Load more');
  const error = h('p', { class: 'error-box', hidden: true });

  root.append(
    h('div', { class: 'toolbar' }, search, typeSel, statusSel, clearBtn),
    error,
    h('table', { class: 'sagas', id: 'sagas' },
      h('thead', null, h('tr', null, ['Saga', 'Type', 'Key', 'Status', 'Updated', 'Error'].map((t) => h('th', null, t)))),
      tbody),
    empty, h('div', { class: 'more' }, more));

  function fillTypes() {
    const types = new Set(app.types);
    for (const r of rows.values()) types.add(r.saga.type);
    if (f.type) types.add(f.type);
    clear(typeSel, h('option', { value: '' }, 'any type'), [...types].sort().map((t) => h('option', { value: t }, t)));
    typeSel.value = f.type;
  }
  fillTypes();

  function syncAddress() {
    const q = new URLSearchParams();
    for (const k of ['type', 'status', 'q']) if (f[k]) q.set(k, f[k]);
    const s = q.toString();
    history.replaceState(null, '', `#/${s ? `?${s}` : ''}`);
  }

  function query(extra) {
    const q = new URLSearchParams();
    if (f.type) q.set('type', f.type);
    if (f.status) q.set('status', f.status);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return `v1/sagas?${q}`;
  }

  // the rows: one GET of the list; a search also looks the text up as a saga id
  async function fetchRows() {
    const limit = Math.min(1000, shown);
    if (!f.q) {
      const page = await api(query({ limit }));
      return { sagas: page.sagas || [], next: page.next || null };
    }
    const [byId, byKey] = await Promise.all([
      f.q.includes('/') ? null : apiOrNull(`v1/sagas/${encodeURIComponent(f.q)}`),
      api(query({ key: f.q, limit })),
    ]);
    // a host without key search ignores ?key=: keep only the rows whose key it is
    const sagas = (byKey.sagas || []).filter((s) => s.key === f.q);
    if (byId && !sagas.some((s) => s.id === byId.id)
        && (!f.type || byId.type === f.type) && (!f.status || byId.status === f.status)) sagas.unshift(byId);
    return { sagas, next: sagas.length === (byKey.sagas || []).length ? byKey.next || null : null };
  }

  async function refresh() {
    const my = ++seq;
    try {
      const { sagas, next: n } = await fetchRows();
      if (my !== seq) return; // a newer refresh has been sent meanwhile
      error.hidden = true;
      next = n;
      render(sagas);
    } catch (e) {
      if (my !== seq) return;
      error.textContent = e instanceof ApiError ? `${e.status}: ${e.message}` : `cannot reach the host: ${e.message}`;
      error.hidden = false;
    }
  }
  const refreshSoon = throttle(refresh, 500);

  function cell(cls) { return h('td', { class: cls }); }
  function setText(el, text) { if (el.textContent !== text) el.textContent = text; }

  function makeRow(s) {
    const link = h('a', { href: `#/saga/${encodeURIComponent(s.id)}`, class: 'mono', title: s.id }, shortId(s.id));
    const cells = { id: h('td', { class: 'id' }, link), type: cell('type'), key: cell('key mono'), status: cell('status'),
      updated: cell('updated'), error: cell('err') };
    const tr = h('tr', { dataset: { id: s.id } }, Object.values(cells));
    tr.addEventListener('click', (e) => { if (e.target.tagName !== 'A') app.navigate(`#/saga/${encodeURIComponent(s.id)}`); });
    return { tr, cells, saga: s };
  }

  function updateRow(r, s) {
    r.saga = { ...r.saga, ...s };
    s = r.saga;
    setText(r.cells.type, s.type || '');
    setText(r.cells.key, s.key || '');
    if (r.cells.status.dataset.status !== s.status) {
      clear(r.cells.status, statusBadge(s.status));
      r.cells.status.dataset.status = s.status;
      r.tr.dataset.status = s.status;
    }
    setText(r.cells.updated, fmtAgo(s.updated_at || s.created_at));
    r.cells.updated.title = fmtTime(s.updated_at || s.created_at);
    setText(r.cells.error, s.error || '');
    r.cells.error.title = s.error || '';
  }

  function render(sagas) {
    const seen = new Set();
    for (const s of sagas) {
      let r = rows.get(s.id);
      if (!r) {
        r = makeRow(s);
        rows.set(s.id, r);
        if (loadedOnce) { // arrived live: show it
          r.tr.classList.add('fresh');
          setTimeout(() => r.tr.classList.remove('fresh'), 2500);
        }
      }
      updateRow(r, s);
      tbody.append(r.tr); // in the order of the answer
      seen.add(s.id);
    }
    for (const [id, r] of rows) if (!seen.has(id)) { r.tr.remove(); rows.delete(id); }
    loadedOnce = true;
    more.hidden = !next;
    empty.hidden = rows.size > 0;
    empty.textContent = f.q ? `No saga has the id or key "${f.q}"${f.type || f.status ? ' (with these filters)' : ''}.`
      : f.type || f.status ? 'No saga matches these filters.' : 'No sagas yet. Start one: POST /v1/sagas/{type}.';
    if ([...rows.values()].some((r) => !app.types.includes(r.saga.type))) fillTypes();
  }

  function setFilter(k, v) {
    if (f[k] === v) return;
    f[k] = v;
    shown = PAGE;
    syncAddress();
    refresh();
  }
  let typing = null;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => setFilter('q', search.value.trim()), 300);
  });
  search.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { clearTimeout(typing); setFilter('q', search.value.trim()); }
  });
  typeSel.addEventListener('change', () => setFilter('type', typeSel.value));
  statusSel.addEventListener('change', () => setFilter('status', statusSel.value));
  clearBtn.addEventListener('click', () => {
    search.value = '';
    typeSel.value = '';
    statusSel.value = '';
    f.q = f.type = f.status = '';
    shown = PAGE;
    syncAddress();
    refresh();
  });
  more.addEventListener('click', async () => {
    if (!next) return;
    more.disabled = true;
    try {
      const page = await api(query(f.q ? { key: f.q, cursor: next, limit: PAGE } : { cursor: next, limit: PAGE }));
      const all = [...[...rows.values()].map((r) => r.saga), ...(page.sagas || []).filter((s) => !rows.has(s.id))];
      shown = all.length;
      next = page.next || null;
      render(all);
    } finally {
      more.disabled = false;
    }
  });

  const ticker = setInterval(() => {
    for (const r of rows.values()) setText(r.cells.updated, fmtAgo(r.saga.updated_at || r.saga.created_at));
  }, 5000);

  refresh();
  return {
    onEvent(ev) {
      const r = ev.saga_id && rows.get(ev.saga_id);
      if (r && ev.status) updateRow(r, { status: ev.status, updated_at: ev.at || r.saga.updated_at });
      if (ev.saga_id) refreshSoon();
    },
    poll: refresh,
    onTypes: fillTypes,
    unmount() { clearInterval(ticker); clearTimeout(typing); seq++; },
  };
}
