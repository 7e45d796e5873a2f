// events: the host's live event stream, GET v1/events (Server-Sent Events), read with fetch() rather
// than EventSource, which cannot send an Authorization header. Sends Last-Event-ID when it reconnects
// (so nothing is missed), reconnects with backoff when the stream ends or fails, and gives up for
// polling when the host has no stream (404).
import { headers, reauth, token, url } from './api.js';

// Parses a text/event-stream body; onMessage({id, type, data}) for each event (RFC: WHATWG HTML,
// "Server-sent events": lines end with CRLF, LF or CR; ":" starts a comment; an empty line dispatches).
export async function readSse(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '', data = [], type = '', id;
  const line = (l) => {
    if (l === '') {
      if (data.length) onMessage({ id, type: type || 'message', data: data.join('\n') });
      data = [];
      type = '';
      return;
    }
    if (l[0] === ':') return;
    const c = l.indexOf(':');
    const field = c < 0 ? l : l.slice(0, c);
    let v = c < 0 ? '' : l.slice(c + 1);
    if (v[0] === ' ') v = v.slice(1);
    if (field === 'data') data.push(v);
    else if (field === 'event') type = v;
    else if (field === 'id' && !v.includes('\0')) id = v;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let m;
    while ((m = /\r\n|\r|\n/.exec(buf))) {
      if (m[0] === '\r' && m.index === buf.length - 1) break; // maybe the first half of a CRLF
      line(buf.slice(0, m.index));
      buf = buf.slice(m.index + m[0].length);
    }
  }
}

const sleep = (n) => new Promise((r) => setTimeout(r, n));

// onEvent(json) per event; onState('connecting' | 'live' | 'reconnecting' | 'polling');
// onConnected() each time the stream is (re)opened, to catch up on what the page shows.
export function startEvents({ onEvent, onState, onConnected }) {
  let lastId = null, stopped = false, ctrl = null, backoff = 500;
  const wait = async () => {
    onState('reconnecting');
    await sleep(backoff + Math.random() * 250);
    backoff = Math.min(backoff * 2, 10000);
  };
  (async () => {
    onState('connecting');
    while (!stopped) {
      ctrl = new AbortController();
      const sent = token();
      let res;
      try {
        const hdr = headers({ Accept: 'text/event-stream' });
        if (lastId) hdr['Last-Event-ID'] = lastId;
        res = await fetch(url('v1/events'), { headers: hdr, signal: ctrl.signal, cache: 'no-store' });
      } catch {
        if (!stopped) await wait();
        continue;
      }
      if (res.status === 404) { onState('polling'); return; } // a host without the stream
      if (res.status === 401) {
        const why = await res.json().then((d) => d && d.error, () => null);
        await reauth(sent, why || 'authentication required');
        continue;
      }
      if (!res.ok || !res.body) { await wait(); continue; }
      onState('live');
      backoff = 500;
      if (onConnected) onConnected();
      try {
        await readSse(res.body, (m) => {
          if (m.id) lastId = m.id;
          if (m.type !== 'message') return;
          let ev;
          try { ev = JSON.parse(m.data); } catch { return; }
          onEvent(ev);
        });
      } catch { /* the connection broke: reconnect below */ }
      if (!stopped) await wait();
    }
  })();
  return {
    stop() {
      stopped = true;
      if (ctrl) ctrl.abort();
    },
  };
}
