// dialog: modal dialogs (<dialog>): a title, some content, a few fields and a confirm button. The
// submit callback runs with the fields' values; what it throws is shown in the dialog, which stays
// open, and what it returns is what modal() resolves to (null when cancelled).
import { h } from './dom.js';

// fields: [{name, label, type: 'text' | 'password' | 'textarea', required, value, placeholder, hint}]
export function modal({ title, content, fields = [], confirm = 'OK', danger = false, cancel = 'Cancel',
  submit = async (v) => v, id }) {
  return new Promise((resolve) => {
    const error = h('p', { class: 'dlg-error', role: 'alert', hidden: true });
    const inputs = {};
    const fieldEls = fields.map((f) => {
      const attrs = { name: f.name, id: `dlg-${f.name}`, placeholder: f.placeholder, required: f.required,
        autocomplete: f.type === 'password' ? 'off' : undefined, spellcheck: 'false' };
      const input = f.type === 'textarea' ? h('textarea', { ...attrs, rows: 3 }) : h('input', { ...attrs, type: f.type || 'text' });
      if (f.value) input.value = f.value;
      inputs[f.name] = input;
      return h('label', { class: 'field', for: attrs.id }, h('span', null, f.label), input,
        f.hint ? h('small', null, f.hint) : null);
    });
    const ok = h('button', { type: 'submit', class: danger ? 'btn danger' : 'btn primary', id: 'dlg-confirm' }, confirm);
    const no = cancel ? h('button', { type: 'button', class: 'btn', id: 'dlg-cancel' }, cancel) : null;
    const form = h('form', { class: 'dlg-form' }, h('h2', null, title), h('div', { class: 'dlg-content' }, content),
      fieldEls, error, h('div', { class: 'dlg-buttons' }, no, ok));
    const dlg = h('dialog', { class: 'dlg', id: id || null }, form);
    const values = () => Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
    const update = () => { ok.disabled = fields.some((f) => f.required && !inputs[f.name].value.trim()); };
    let done = false;
    const finish = (v) => {
      if (done) return;
      done = true;
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    form.addEventListener('input', update);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (ok.disabled) return;
      ok.disabled = true;
      error.hidden = true;
      try {
        finish(await submit(values()));
      } catch (err) {
        error.textContent = err.message || String(err);
        error.hidden = false;
        update();
      }
    });
    if (no) no.addEventListener('click', () => finish(null));
    dlg.addEventListener('cancel', (e) => { // Escape
      e.preventDefault();
      if (cancel) finish(null);
    });
    document.body.append(dlg);
    update();
    dlg.showModal();
    const first = fields.length ? inputs[fields[0].name] : ok;
    first.focus();
  });
}
