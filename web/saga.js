// saga: one saga. Its steps as a timeline (every attempt of every action and compensation, with its
// duration and error, and the operator actions with who and why), its input and data, and the
// operator buttons: compensate (shows the plan first and asks for a reason), retry, resolve (asks for
// a note). Live: an event for this saga fetches it again.
import { api, ApiError, token } from './api.js';
import { h, clear, fmtDuration, fmtTime, ms, pretty, statusBadge, TERMINAL, throttle, toast } from './dom.js';
import { modal } from './dialog.js';

const OPERATOR_KEY = 'sagahost.operator';

// "by olga: the customer called" -> {who: "olga", why: "the customer called"}
function byWhy(detail) {
  const m = /^by ([^:]*): ([\s\S]*)$/.exec(detail || '');
  return m ? { who: m[1], why: m[2] } : { who: '', why: detail || '' };
}

const EVENT_TITLES = {
  operator_compensate: 'Compensate (operator)',
  operator_retry: 'Retry (operator)',
  operator_resolve: 'Resolved (operator)',
  saga_timeout: 'Saga timed out',
};

function timelineEntry(st, now) {
  if (st.phase === 'saga') {
    const { who, why } = byWhy(st.error);
    const op = (st.event || '').startsWith('operator_');
    return h('li', { class: `ev saga-ev${op ? ' op' : ''}`, dataset: { event: st.event || '' } },
      h('span', { class: 'dot' }),
      h('div', { class: 'ev-main' },
        h('div', { class: 'ev-title' }, EVENT_TITLES[st.event] || st.event || 'event',
          h('span', { class: 'at' }, fmtTime(st.started_at)), h('span', { class: 'where' }, `at step ${st.step} ${st.name}`)),
        who ? h('div', { class: 'ev-who' }, 'by ', h('b', null, who)) : null,
        why ? h('div', { class: 'ev-why' }, op ? 'why: ' : '', why) : null));
  }
  const start = ms(st.started_at), end = ms(st.finished_at);
  const running = st.status === 'running';
  const dur = start == null ? null : (end != null ? end - start : running ? now - start : null);
  const durEl = h('span', { class: 'dur' }, dur == null ? '' : fmtDuration(dur));
  if (running && start != null) durEl.dataset.since = String(start);
  return h('li', { class: `ev ph-${st.phase} st-${st.status}`, dataset: { step: st.step, phase: st.phase, status: st.status } },
    h('span', { class: 'dot' }),
    h('div', { class: 'ev-main' },
      h('div', { class: 'ev-title' }, h('span', { class: 'step-no' }, st.step), st.name,
        h('span', { class: `phase ph-${st.phase}` }, st.phase === 'compensate' ? 'compensation' : 'action'),
        st.attempt > 1 ? h('span', { class: 'attempt' }, `attempt ${st.attempt}`) : null),
      h('div', { class: 'ev-meta' }, h('span', { class: `st st-${st.status}` }, st.status),
        h('span', { class: 'at' }, fmtTime(st.started_at)), durEl),
      st.error ? h('div', { class: 'ev-error' }, st.error) : null));
}

export function mountSaga(root, app, id) {
  let saga = null, seq = 0;
  const body = h('div', { class: 'saga-page', id: 'saga', dataset: { id } }, h('p', { class: 'muted' }, 'loading…'));
  root.append(h('a', { href: '#/', class: 'back' }, '← all sagas'), body);

  // Without auth the host records the body's "by": ask for a name once and remember it. With a
  // token the host records the token's name and ignores "by".
  const byField = () => (token() ? [] : [{ name: 'by', label: 'Your name (recorded in the history)',
    value: localStorage.getItem(OPERATOR_KEY) || '', placeholder: 'operator' }]);
  const remember = (v) => { if (v.by) localStorage.setItem(OPERATOR_KEY, v.by); return v.by || 'dashboard'; };

  async function act(verb, payload) {
    const r = await api(`v1/sagas/${encodeURIComponent(id)}/${verb}`, { method: 'POST', body: payload });
    if (r && r.accepted && r.applied === false) toast(r.message || 'accepted: the host that owns the saga applies it when it can');
    else if (r && r.id) render(r);
    load();
    return r;
  }

  async function compensate() {
    let plan;
    try {
      plan = await api(`v1/sagas/${encodeURIComponent(id)}/plan`);
    } catch (e) {
      toast(`cannot read the plan: ${e.message}`, 'error');
      return;
    }
    const comps = plan.compensations || [];
    const content = !plan.abortable ? h('p', null, `This saga is ${plan.status || saga.status}: it cannot be compensated.`)
      : comps.length ? [h('p', null, 'The saga stops now, and these compensations run, in this order:'),
        h('ol', { class: 'plan', id: 'plan' }, comps.map((c) => h('li', { dataset: { step: c.step } },
          h('span', { class: 'step-no' }, c.step), c.name)))]
        : h('p', { id: 'plan', class: 'plan-none' }, 'The saga stops now. No compensation will run: no completed step has one.');
    await modal({
      id: 'compensate-dialog',
      title: `Compensate this ${saga.type} saga?`,
      content: [h('p', null, h('code', null, id), saga.key != null ? [' · key ', h('code', null, saga.key)] : null), content],
      fields: plan.abortable ? [{ name: 'reason', label: 'Reason (recorded in the history)', type: 'textarea', required: true,
        placeholder: 'why it must be undone' }, ...byField()] : [],
      confirm: plan.abortable ? 'Compensate' : 'Close',
      danger: plan.abortable,
      cancel: plan.abortable ? 'Cancel' : null,
      submit: async (v) => {
        if (!plan.abortable) return null;
        await act('compensate', { reason: v.reason, by: remember(v) });
        toast('compensation started');
        return true;
      },
    });
  }

  async function retry() {
    const pending = (saga.pending_compensations || []).map((c) => `${c.step} ${c.name}`).join(', ');
    await modal({
      id: 'retry-dialog',
      title: 'Retry the failed compensation?',
      content: h('p', null, h('code', null, id), ': ', 'The failed compensation runs again, then the rest', pending ? ` (${pending})` : '', '.'),
      fields: byField(),
      confirm: 'Retry',
      submit: async (v) => { await act('retry', { by: remember(v) }); return true; },
    });
  }

  async function resolve() {
    await modal({
      id: 'resolve-dialog',
      title: 'Mark this saga resolved?',
      content: h('p', null, h('code', null, id), ': ', 'Say what was done by hand: the saga ends as resolved and its remaining compensations do not run.'),
      fields: [{ name: 'note', label: 'Note (recorded in the history)', type: 'textarea', required: true }, ...byField()],
      confirm: 'Resolve',
      danger: true,
      submit: async (v) => { await act('resolve', { note: v.note, by: remember(v) }); return true; },
    });
  }

  function render(s) {
    saga = s;
    const now = Date.now();
    const running = s.status === 'running';
    const failed = s.status === 'compensation_failed';
    const btn = (label, idAttr, enabled, why, f, cls = 'btn') => h('button', { class: cls, id: idAttr, type: 'button',
      disabled: !enabled, title: enabled ? null : why, onclick: f }, label);
    const steps = s.steps || [];
    clear(body,
      h('div', { class: 'saga-head' },
        h('div', null,
          h('h1', null, s.type, ' ', h('span', { id: 'saga-status' }, statusBadge(s.status))),
          h('div', { class: 'ids' }, h('code', { class: 'saga-id' }, s.id),
            s.key != null ? [' · key ', h('code', { class: 'saga-key' }, s.key)] : null)),
        h('div', { class: 'actions' },
          btn('Compensate…', 'btn-compensate', running, 'only a running saga can be compensated', compensate, 'btn danger'),
          btn('Retry…', 'btn-retry', failed, 'only a compensation_failed saga can be retried', retry),
          btn('Resolve…', 'btn-resolve', failed, 'only a compensation_failed saga can be resolved', resolve))),
      s.error ? h('p', { class: 'error-box saga-error' }, s.error) : null,
      h('div', { class: 'saga-grid' },
        h('section', { class: 'card' }, h('h2', null, 'Steps'),
          steps.length ? h('ol', { class: 'timeline', id: 'timeline' }, steps.map((st) => timelineEntry(st, now)))
            : h('p', { class: 'muted' }, 'No step has started yet.'),
          s.pending_compensations && s.pending_compensations.length
            ? h('p', { class: 'pending' }, 'Compensations still to run: ',
              s.pending_compensations.map((c) => `${c.step} ${c.name}`).join(', ')) : null),
        h('div', { class: 'side' },
          h('section', { class: 'card' }, h('h2', null, 'Details'),
            h('dl', { class: 'details' },
              h('dt', null, 'created'), h('dd', null, fmtTime(s.created_at)),
              h('dt', null, 'updated'), h('dd', null, fmtTime(s.updated_at)),
              h('dt', null, 'version'), h('dd', { class: 'mono', title: s.definition_version || '' }, (s.definition_version || '').slice(0, 16)),
              s.idempotency_key ? [h('dt', null, 'idempotency key'), h('dd', { class: 'mono' }, s.idempotency_key)] : null)),
          h('section', { class: 'card' }, h('h2', null, 'Input'), pretty(s.input)),
          h('section', { class: 'card' }, h('h2', null, 'Data'), pretty(s.data)))));
  }

  async function load() {
    const my = ++seq;
    try {
      const s = await api(`v1/sagas/${encodeURIComponent(id)}`);
      if (my === seq) render(s);
    } catch (e) {
      if (my !== seq) return;
      clear(body, h('p', { class: 'error-box' }, e instanceof ApiError && e.status === 404
        ? `No saga with id ${id}.` : `Cannot load the saga: ${e.message}`));
    }
  }
  const loadSoon = throttle(load, 250);

  // the running attempt's duration goes on
  const ticker = setInterval(() => {
    for (const el of body.querySelectorAll('.dur[data-since]')) el.textContent = fmtDuration(Date.now() - Number(el.dataset.since));
  }, 1000);

  load();
  return {
    onEvent(ev) { if (ev.saga_id === id) loadSoon(); },
    poll() { if (!saga || !TERMINAL.has(saga.status)) load(); },
    unmount() { clearInterval(ticker); seq++; },
  };
}
