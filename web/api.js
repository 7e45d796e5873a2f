// api: every request of the dashboard goes through here. It sends the bearer token (kept in
// sessionStorage, so it goes with the tab), asks for one when the host answers 401 (one prompt for
// every request that ran into it, then they are sent again), and turns errors into ApiError with
// the host's own message.
const TOKEN_KEY = 'sagahost.token';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let prompter = async () => null; // (message, refused) => the token the user typed
let prompting = null;            // the prompt on screen, shared by every request waiting for it
const listeners = [];

export function setPrompter(f) { prompter = f; }
export function onTokenChange(f) { listeners.push(f); }
export function token() { return sessionStorage.getItem(TOKEN_KEY); }

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  for (const f of listeners) f(t);
}

// an API path ("v1/sagas") against the page's own address, so the dashboard works behind a prefix too
export function url(path) { return new URL(path, document.baseURI).href; }

export function headers(extra = {}) {
  const hdr = { ...extra };
  const t = token();
  if (t) hdr.Authorization = `Bearer ${t}`;
  return hdr;
}

// After a 401 to a request sent with token `sent`: drops that token and waits for a new one (unless
// another request already got one meanwhile).
export async function reauth(sent, message) {
  if (token() && token() !== sent) return;
  if (sent && token() === sent) setToken(null);
  if (!prompting) {
    prompting = (async () => {
      try {
        const t = await prompter(message, Boolean(sent));
        if (t) setToken(t);
      } finally {
        prompting = null;
      }
    })();
  }
  return prompting;
}

async function decode(res) {
  const text = await res.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return { error: text.slice(0, 300) };
  }
}

// JSON in and out: the answer's body, or an ApiError with its status and the host's message.
export async function api(path, { method = 'GET', body, signal } = {}) {
  for (;;) {
    const sent = token();
    const init = { method, signal, cache: 'no-store', headers: headers() };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(url(path), init);
    const data = await decode(res);
    if (res.status === 401) {
      await reauth(sent, (data && data.error) || 'authentication required');
      continue;
    }
    if (!res.ok) throw new ApiError(res.status, (data && data.error) || `${res.status} ${res.statusText}`);
    return data;
  }
}

// the same, with null for a 404 (a route this host does not have yet, an id that is not there)
export async function apiOrNull(path, opts) {
  try {
    return await api(path, opts);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}
