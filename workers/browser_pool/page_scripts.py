"""The JavaScript the pool runs inside the site's pages (``page.evaluate``)."""

BINDING = "__qpSink"  # window.<name> is visible to the site's scripts: keep it dull
ABORTS = "__qpAborts"

# ``pageHeaders``: the job's fallbacks for headers the page owns; ``ownPaths``: where on
# ``window`` the page keeps its own value of each (a dotted path, e.g. the front end's
# ``version``). The page's value wins; the call goes through the page's own ``fetch``, so its
# anti-bot script adds the bx-* headers (qwen-web-2026.md §2).
READER_JS = """async (url, init, job, sinkName, abortsName, pageHeaders, ownPaths) => {
  const sink = window[sinkName];
  const send = (m) => { m.job = job; sink(JSON.stringify(m)); };
  const aborts = (window[abortsName] = window[abortsName] || {});
  const ac = new AbortController();
  aborts[job] = ac;
  const own = (path) => {
    try {
      const v = String(path || '').split('.').reduce((o, k) => (o == null || !k ? undefined : o[k]), window);
      return (typeof v === 'string' || typeof v === 'number') && String(v) ? String(v) : null;
    } catch (e) { return null; }
  };
  const sendHeaders = Object.assign({}, init.headers || {});
  const names = new Set(Object.keys(pageHeaders || {}).concat(Object.keys(ownPaths || {})));
  for (const name of names) {
    const value = own((ownPaths || {})[name]) || (pageHeaders || {})[name];
    if (value) sendHeaders[name] = value;
  }
  try {
    const r = await fetch(url, Object.assign({}, init, {headers: sendHeaders, signal: ac.signal}));
    const headers = {};
    r.headers.forEach((v, k) => { headers[k] = v; });
    send({type: 'start', status: r.status, headers});
    if (r.body) {
      const reader = r.body.getReader(), dec = new TextDecoder();
      for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        const text = dec.decode(value, {stream: true});
        if (text) send({type: 'data', data: text});
      }
      const tail = dec.decode();
      if (tail) send({type: 'data', data: tail});
    }
    send({type: 'end'});
  } catch (e) {
    try { send({type: 'error', error: String((e && e.name ? e.name + ': ' : '') + (e && e.message || e))}); }
    catch (e2) {}
  } finally {
    delete aborts[job];
  }
}"""

ABORT_JS = """(job, abortsName) => {
  const a = window[abortsName];
  if (a && a[job]) { a[job].abort(); return true; }
  return false;
}"""

TOKEN_JS = """(token) => {
  try { if (localStorage.getItem('token') !== token) localStorage.setItem('token', token); } catch (e) {}
}"""

# the site's anti-bot module (baxia) is ready once it hands out a uid token (qwen-web-2026.md §4)
ANTIBOT_READY_JS = """() => {
  try {
    const b = window.__baxia__;
    return !!(b && b.getFYModule && b.getFYModule() && b.getFYModule().getUidToken());
  } catch (e) { return false; }
}"""
