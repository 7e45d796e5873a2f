// app: the dashboard's shell. Routes (#/, #/saga/ID, #/definitions, #/breakers), the counts per
// status, the token prompt, and the live feed: every event from the stream goes to the view on
// screen and refreshes the counts (at most every 500 ms); a host without the stream is polled
// every 2 s instead.
import { api, apiOrNull, onTokenChange, setPrompter, setToken, token } from './api.js';
import { h, clear, STATUSES, throttle, toast } from './dom.js';
import { modal } from './dialog.js';
import { startEvents } from './events.js';
import { mountSagas } from './sagas.js';
import { mountSaga } from './saga.js';
import { mountBreakers, mountDefinitions } from './info.js';

const POLL_MS = 2000;

const app = {
  types: [],          // saga types of the loaded definitions (the type filter's choices)
  live: 'connecting', // the stream's state
  view: null,         // the mounted view: {onEvent(ev), poll(), unmount()}
  refreshCounts: null,
  loadTypes: null,
  navigate(hash) { location.hash = hash; },
  isLive() { return app.live === 'live'; },
};

// ---- the token prompt (the host answered 401) ----
setPrompter((message, refused) => modal({
  id: 'token-dialog',
  title: 'This host needs a token',
  content: [
    refused ? h('p', { class: 'refused' }, 'That token was refused: ', message) : h('p', null, message),
    h('p', { class: 'muted' }, 'Paste a bearer token from the host\'s --auth file. It is kept in this tab only ',
      '(sessionStorage) and sent as Authorization: Bearer with every request.'),
  ],
  fields: [{ name: 'token', label: 'Token', type: 'password', required: true }],
  confirm: 'Sign in',
  cancel: null,
  submit: async (v) => v.token,
}));

const signout = document.getElementById('signout');
const showSignout = () => { signout.hidden = !token(); };
signout.addEventListener('click', () => { setToken(null); location.reload(); });
onTokenChange(showSignout);
showSignout();

// ---- counts per status ----
const countsEl = document.getElementById('counts');
const countEls = {};
for (const st of STATUSES) {
  const n = h('span', { class: 'n' }, '–');
  countEls[st] = n;
  countsEl.append(h('a', { class: `count st-${st}`, id: `count-${st}`, href: `#/?status=${st}`, title: `show the ${st} sagas` },
    n, h('span', { class: 'label' }, st.replace('_', ' '))));
}
app.refreshCounts = throttle(async () => {
  try {
    const c = await apiOrNull('v1/counts');
    for (const st of STATUSES) countEls[st].textContent = c && c.counts && c.counts[st] != null ? String(c.counts[st]) : '–';
  } catch { /* shown by the connection state */ }
}, 500);

app.loadTypes = throttle(async () => {
  try {
    const d = await api('v1/definitions');
    app.types = [...new Set((d.definitions || []).map((x) => x.type))].sort();
    if (app.view && app.view.onTypes) app.view.onTypes();
  } catch { /* the views show their own errors */ }
}, 500);

// ---- the connection indicator ----
const conn = document.getElementById('conn');
const CONN_TEXT = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', polling: 'polling every 2 s' };
function setLive(state) {
  app.live = state;
  conn.className = `conn ${state}`;
  conn.textContent = CONN_TEXT[state] || state;
  conn.title = state === 'polling' ? 'this host has no event stream (GET /v1/events): the page asks again every 2 s'
    : state === 'live' ? 'updated live from the host\'s event stream' : '';
}

// ---- routing ----
const viewEl = document.getElementById('view');
function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  if (app.view) app.view.unmount();
  clear(viewEl);
  let nav = 'sagas';
  const m = path.match(/^\/saga\/(.+)$/);
  if (m) app.view = mountSaga(viewEl, app, decodeURIComponent(m[1]));
  else if (path === '/definitions') { nav = 'definitions'; app.view = mountDefinitions(viewEl, app); }
  else if (path === '/breakers') { nav = 'breakers'; app.view = mountBreakers(viewEl, app); }
  else app.view = mountSagas(viewEl, app, params);
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === nav);
}
window.addEventListener('hashchange', route);

// ---- live updates ----
function onEvent(ev) {
  if (ev.kind === 'definition_loaded' || ev.kind === 'definition_failed') app.loadTypes();
  else app.refreshCounts();
  if (app.view) app.view.onEvent(ev);
}

setInterval(() => {
  if (app.live === 'live') return;
  app.refreshCounts();
  if (app.view) app.view.poll();
}, POLL_MS);

window.addEventListener('unhandledrejection', (e) => {
  toast(e.reason && e.reason.message ? e.reason.message : String(e.reason), 'error');
});

route();
app.refreshCounts();
app.loadTypes();
startEvents({
  onEvent,
  onState: setLive,
  onConnected: () => { // catch up with what happened while there was no stream
    app.refreshCounts();
    if (app.view) app.view.poll();
  },
});
