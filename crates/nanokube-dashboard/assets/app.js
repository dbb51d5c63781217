// nanokube dashboard. Plain JavaScript, no build step. Every call is an ordinary API
// request made as the logged-in identity (session mode: under /dashboard/k8s with the
// session cookie and a CSRF token; direct mode: /api… through a proxy or with a client
// certificate). Nothing here decides what the user may do: the API server does.
'use strict';

const S = {
  mode: null, // 'session' | 'direct'
  base: '',
  csrf: '',
  user: null,
  ns: '',
  resources: new Map(), // "group/resource" -> {group, version, resource, kind, namespaced, verbs, subresources}
  crds: [],
  cleanup: [], // functions that stop the current view's watches
  epoch: 0, // bumped by every login and logout: an older session's late replies are dropped
};

// ---------- small DOM helpers (text only: never innerHTML with data) ----------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const $ = (id) => document.getElementById(id);
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

// ---------- API ----------
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || (typeof body === 'string' && body) || `HTTP ${status}`);
    this.status = status; this.body = body;
  }
}
const TABLE = 'application/json;as=Table;v=v1;g=meta.k8s.io,application/json';

async function api(path, opts = {}) {
  const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
  const method = opts.method || 'GET';
  if (method !== 'GET') {
    if (S.mode === 'session') headers['X-CSRF-Token'] = S.csrf;
    if (opts.body !== undefined && !headers['Content-Type']) headers['Content-Type'] = 'application/json';
  }
  const body = opts.body === undefined ? undefined : (typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body));
  const epoch = S.epoch;
  const r = await fetch(S.base + path, { method, headers, body, credentials: 'same-origin', signal: opts.signal, cache: 'no-store' });
  const text = await r.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch (_) { /* plain text */ }
  if (!r.ok) {
    // A 401 ends this session only: a request an earlier session sent says nothing of it.
    if (r.status === 401 && S.mode === 'session' && epoch === S.epoch) showLogin('Your session ended (logged out, or its token was revoked).');
    throw new ApiError(r.status, parsed);
  }
  return parsed;
}

// A watch: newline-delimited JSON events streamed over fetch. Returns a stop function.
function watch(path, params, onEvent, onEnd, accept) {
  const ctrl = new AbortController();
  const q = new URLSearchParams(params);
  q.set('watch', '1');
  q.set('allowWatchBookmarks', 'true');
  (async () => {
    try {
      const r = await fetch(`${S.base}${path}?${q}`, { headers: { Accept: accept || 'application/json' }, credentials: 'same-origin', signal: ctrl.signal, cache: 'no-store' });
      if (!r.ok) { onEnd && onEnd(new ApiError(r.status, await r.text())); return; }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i); buf = buf.slice(i + 1);
          if (line.trim()) { try { onEvent(JSON.parse(line)); } catch (e) { console.error(e); } }
        }
      }
      onEnd && onEnd(null);
    } catch (e) { if (e.name !== 'AbortError') onEnd && onEnd(e); }
  })();
  return () => ctrl.abort();
}

function gvPath(group, version) { return group ? `/apis/${group}/${version}` : `/api/${version}`; }
function collectionPath(r, ns) { return `${gvPath(r.group, r.version)}${r.namespaced && ns ? `/namespaces/${encodeURIComponent(ns)}` : ''}/${r.resource}`; }
function objectPath(r, ns, name) { return `${gvPath(r.group, r.version)}${r.namespaced ? `/namespaces/${encodeURIComponent(ns)}` : ''}/${r.resource}/${encodeURIComponent(name)}`; }
function resKey(group, resource) { return `${group || 'core'}/${resource}`; }
function findRes(group, resource) { return S.resources.get(resKey(group, resource)); }
function findKind(apiVersion, kind) {
  const [g, v] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  for (const r of S.resources.values()) if (r.group === g && r.kind === kind) return Object.assign({}, r, { version: v || r.version });
  return null;
}

// ---------- identity ----------
async function start() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('ns-select').addEventListener('change', (e) => { S.ns = e.target.value; route(); });
  window.addEventListener('hashchange', route);
  try {
    const s = await fetch('/dashboard/session', { credentials: 'same-origin', cache: 'no-store' });
    if (s.ok) { const j = await s.json(); return enter('session', j.user, j.csrfToken); }
  } catch (_) { /* no session */ }
  try {
    const r = await fetch('/apis/authentication.k8s.io/v1/selfsubjectreviews', {
      method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' }),
    });
    if (r.ok) {
      const j = await r.json();
      const u = j.status && j.status.userInfo;
      if (u && u.username && u.username !== 'system:anonymous') return enter('direct', u, '');
    }
  } catch (_) { /* not reachable directly */ }
  showLogin('');
}

function showLogin(message) {
  for (const stop of S.cleanup.splice(0)) stop();
  S.epoch += 1;
  S.mode = null; S.csrf = '';
  // The next session discovers and draws its own navigation.
  clear($('nav'));
  clear($('main'));
  $('app').classList.add('hidden');
  $('login').classList.remove('hidden');
  $('login-error').textContent = message || '';
}

async function login(ev) {
  ev.preventDefault();
  const token = $('login-token').value.trim();
  $('login-error').textContent = '';
  try {
    const r = await fetch('/dashboard/login', { method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token }) });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) { $('login-error').textContent = `Login failed: ${j.message || r.status}`; return; }
    $('login-token').value = '';
    enter('session', j.user, j.csrfToken);
  } catch (e) { $('login-error').textContent = `Login failed: ${e.message}`; }
}

async function logout() {
  await fetch('/dashboard/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': S.csrf, 'Content-Type': 'application/json' }, body: '{}' }).catch(() => {});
  showLogin('Logged out.');
}

async function enter(mode, user, csrf) {
  const epoch = ++S.epoch;
  S.mode = mode; S.user = user; S.csrf = csrf || '';
  S.base = mode === 'session' ? '/dashboard/k8s' : '';
  $('login').classList.add('hidden');
  $('app').classList.remove('hidden');
  $('whoami').textContent = `${user.username}${mode === 'direct' ? ' (via proxy or certificate)' : ''}`;
  $('whoami').title = (user.groups || []).join(', ');
  $('logout').classList.toggle('hidden', mode !== 'session');
  const found = await discover();
  // A logout or a newer login while discovery ran: that session draws, not this one.
  if (epoch !== S.epoch) return;
  S.resources = found.resources;
  S.crds = found.crds;
  buildNav();
  loadNamespaces();
  route();
}

// ---------- discovery ----------
async function discover() {
  const resources = new Map();
  const add = (group, version, list) => {
    for (const r of list.resources || []) {
      const [name, sub] = r.name.split('/');
      const key = resKey(group, name);
      if (sub) { const base = resources.get(key); if (base) base.subresources.add(sub); continue; }
      if (!resources.has(key)) resources.set(key, { group, version, resource: name, kind: r.kind, namespaced: r.namespaced, verbs: r.verbs || [], subresources: new Set() });
    }
  };
  const core = await api('/api/v1').catch(() => ({ resources: [] }));
  add('', 'v1', core);
  const groups = await api('/apis').catch(() => ({ groups: [] }));
  await Promise.all((groups.groups || []).map(async (g) => {
    const v = g.preferredVersion.version;
    const list = await api(`/apis/${g.name}/${v}`).catch(() => null);
    if (list) add(g.name, v, list);
  }));
  const crds = (await api('/apis/apiextensions.k8s.io/v1/customresourcedefinitions').catch(() => ({ items: [] }))).items || [];
  return { resources, crds };
}

const NAV = [
  ['Cluster', [['Overview', '#/'], ['core/nodes'], ['core/namespaces'], ['core/events'], ['Access map', '#/map']]],
  ['Workloads', [['core/pods'], ['apps/deployments'], ['apps/statefulsets'], ['apps/daemonsets'], ['batch/jobs'], ['batch/cronjobs'], ['apps/replicasets'], ['autoscaling/horizontalpodautoscalers']]],
  ['Network', [['core/services'], ['core/endpoints'], ['discovery.k8s.io/endpointslices'], ['networking.k8s.io/ingresses'], ['networking.k8s.io/ingressclasses'], ['networking.k8s.io/networkpolicies']]],
  ['Config', [['core/configmaps'], ['core/secrets'], ['core/resourcequotas'], ['core/limitranges'], ['policy/poddisruptionbudgets']]],
  ['Storage', [['core/persistentvolumeclaims'], ['core/persistentvolumes'], ['storage.k8s.io/storageclasses']]],
  ['Access control', [['core/serviceaccounts'], ['rbac.authorization.k8s.io/roles'], ['rbac.authorization.k8s.io/rolebindings'], ['rbac.authorization.k8s.io/clusterroles'], ['rbac.authorization.k8s.io/clusterrolebindings'], ['Who can…', '#/can']]],
];

function titleOf(resource) {
  const names = { horizontalpodautoscalers: 'HPAs', endpointslices: 'EndpointSlices', networkpolicies: 'NetworkPolicies', ingressclasses: 'IngressClasses', configmaps: 'ConfigMaps', persistentvolumeclaims: 'PVCs', persistentvolumes: 'PVs', storageclasses: 'StorageClasses', serviceaccounts: 'ServiceAccounts', clusterroles: 'ClusterRoles', clusterrolebindings: 'ClusterRoleBindings', rolebindings: 'RoleBindings', resourcequotas: 'ResourceQuotas', limitranges: 'LimitRanges', poddisruptionbudgets: 'PDBs', statefulsets: 'StatefulSets', daemonsets: 'DaemonSets', replicasets: 'ReplicaSets', cronjobs: 'CronJobs' };
  return names[resource] || resource.charAt(0).toUpperCase() + resource.slice(1);
}

function buildNav() {
  const nav = clear($('nav'));
  for (const [section, items] of NAV) {
    nav.append(el('h3', {}, section));
    for (const [a, b] of items) {
      if (b) { nav.append(el('a', { href: b }, a)); continue; }
      const [g, r] = a.split('/');
      if (!S.resources.has(a)) continue;
      nav.append(el('a', { href: `#/list/${g}/${r}` }, titleOf(r)));
    }
  }
  nav.append(el('h3', {}, 'Custom resources'));
  nav.append(el('a', { href: '#/list/apiextensions.k8s.io/customresourcedefinitions' }, 'Definitions'));
  for (const crd of S.crds) {
    nav.append(el('a', { href: `#/list/${crd.spec.group}/${crd.spec.names.plural}` }, crd.spec.names.kind));
  }
  nav.append(el('h3', {}, 'Create'));
  nav.append(el('a', { href: '#/create' }, 'From YAML'));
}

async function loadNamespaces() {
  const sel = $('ns-select');
  try {
    const list = await api('/api/v1/namespaces');
    clear(sel).append(el('option', { value: '' }, 'all namespaces'));
    for (const n of list.items) sel.append(el('option', { value: n.metadata.name, selected: n.metadata.name === S.ns }, n.metadata.name));
  } catch (_) { /* may not list namespaces: keep "all" and free text via URL */ }
}

// ---------- routing ----------
function route() {
  if (!S.mode) return;
  for (const stop of S.cleanup.splice(0)) stop();
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('/').slice(1).map(decodeURIComponent);
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.getAttribute('href') === `#${hash}`);
  // Each view draws into a container of its own: an earlier view still finishing its
  // requests writes into its detached container, never into this one.
  const main = el('div', { class: 'view' });
  clear($('main')).append(main);
  const fail = (e) => main.append(el('p', { class: 'error' }, errorText(e)));
  if (parts[0] === 'list') return listView(main, parts[1], parts[2]).catch(fail);
  if (parts[0] === 'obj') return objectView(main, parts[1], parts[2], parts[3] === '_' ? '' : parts[3], parts[4], parts[5] || 'summary').catch(fail);
  if (parts[0] === 'create') return createView(main);
  if (parts[0] === 'map') return mapView(main).catch(fail);
  if (parts[0] === 'can') return canView(main).catch(fail);
  return overview(main).catch(fail);
}

function errorText(e) {
  if (e instanceof ApiError) return `${e.status} ${(e.body && e.body.reason) || ''}: ${e.message}`;
  return String(e && e.message ? e.message : e);
}

function age(ts) {
  if (!ts) return '';
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function objLink(r, ns, name, label) {
  return el('a', { href: `#/obj/${r.group || 'core'}/${r.resource}/${ns || '_'}/${encodeURIComponent(name)}` }, label || name);
}

// ---------- overview ----------
async function overview(main) {
  main.append(el('h1', {}, 'Cluster overview'));
  const cards = el('div', { class: 'cards' });
  const warnings = el('div', {});
  main.append(cards, el('h2', {}, 'Pods by status'), el('div', { id: 'pod-phases', class: 'cards' }), el('h2', {}, 'Recent warnings'), warnings);
  const t0 = performance.now();
  const ns = S.ns;
  const podsPath = collectionPath(findRes('', 'pods'), ns);
  const [nodes, pods, nss, deps] = await Promise.all([
    api('/api/v1/nodes').catch(() => null),
    api(`${podsPath}?includeObject=None`, { headers: { Accept: TABLE } }).catch(() => null),
    api('/api/v1/namespaces').catch(() => null),
    api(collectionPath(findRes('apps', 'deployments'), ns)).catch(() => null),
  ]);
  const card = (big, label) => el('div', { class: 'card' }, el('div', { class: 'big' }, big), el('div', { class: 'label' }, label));
  if (nodes) {
    const ready = nodes.items.filter((n) => (n.status.conditions || []).some((c) => c.type === 'Ready' && c.status === 'True')).length;
    cards.append(card(`${ready}/${nodes.items.length}`, 'nodes ready'));
    let cpu = 0, mem = 0;
    for (const n of nodes.items) { cpu += parseQuantity((n.status.capacity || {}).cpu); mem += parseQuantity((n.status.capacity || {}).memory); }
    cards.append(card(`${cpu}`, 'CPUs'), card(`${(mem / 2 ** 30).toFixed(1)} GiB`, 'memory'));
  }
  if (nss) cards.append(card(nss.items.length, 'namespaces'));
  if (deps) cards.append(card(deps.items.length, 'deployments'));
  const phases = $('pod-phases');
  if (pods) {
    const col = pods.columnDefinitions.findIndex((c) => c.name === 'Status');
    const counts = {};
    for (const row of pods.rows) { const st = row.cells[col] || 'Unknown'; counts[st] = (counts[st] || 0) + 1; }
    phases.append(card(pods.rows.length, 'pods'));
    for (const [st, n] of Object.entries(counts).sort((a, b) => b[1] - a[1])) phases.append(card(n, st));
  } else phases.append(el('p', { class: 'error' }, 'pods: not allowed'));
  const evPath = collectionPath(findRes('', 'events'), ns);
  const evs = await api(`${evPath}?fieldSelector=${encodeURIComponent('type=Warning')}`).catch(() => null);
  if (!evs) warnings.append(el('p', { class: 'count' }, 'events: not allowed'));
  if (evs) {
    const items = evs.items.sort((a, b) => Date.parse(b.lastTimestamp || b.eventTime || 0) - Date.parse(a.lastTimestamp || a.eventTime || 0)).slice(0, 20);
    if (!items.length) warnings.append(el('p', { class: 'ok' }, 'No warnings.'));
    else warnings.append(eventsTable(items));
  }
  main.append(el('p', { class: 'count', id: 'render-time' }, `rendered in ${Math.round(performance.now() - t0)} ms`));
}

function parseQuantity(q) {
  if (!q) return 0;
  const m = /^([0-9.]+)([a-zA-Z]*)$/.exec(q);
  if (!m) return 0;
  const f = { '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 }[m[2]] || 1;
  return parseFloat(m[1]) * f;
}

function eventsTable(items) {
  return el('table', { class: 'grid' },
    el('tr', {}, ['Type', 'Reason', 'Object', 'Message', 'Count', 'Last seen'].map((h) => el('th', {}, h))),
    items.map((e) => el('tr', {},
      el('td', {}, el('span', { class: `pill ${e.type}` }, e.type)),
      el('td', {}, e.reason),
      el('td', {}, `${(e.involvedObject || {}).kind || ''}/${(e.involvedObject || {}).name || ''}`),
      el('td', {}, e.message || e.note || ''),
      el('td', {}, e.count || (e.series && e.series.count) || 1),
      el('td', {}, age(e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp)))));
}

// ---------- lists (server-side Tables, live by watch) ----------
async function listView(main, group, resource) {
  const r = findRes(group === 'core' ? '' : group, resource);
  if (!r) throw new Error(`${resource}.${group} is not served`);
  const title = el('h1', {}, titleOf(resource));
  const filter = el('input', { type: 'search', placeholder: 'filter text', id: 'filter-text' });
  const labels = el('input', { type: 'search', placeholder: 'label selector, e.g. app=web', id: 'filter-labels' });
  const count = el('span', { class: 'count', id: 'row-count' });
  const newBtn = el('button', { id: 'create-button', onclick: () => { location.hash = '#/create'; } }, 'Create');
  main.append(title, el('div', { class: 'toolbar' }, filter, labels, newBtn, count));
  const holder = el('div', {});
  main.append(holder);
  can('create', r, S.ns).then((ok) => { newBtn.disabled = !ok; });
  let columns = []; const rows = new Map(); let rv = '';
  let order = null; // rows' keys sorted by namespace/name; rebuilt only when rows come or go
  const base = collectionPath(r, S.ns);
  let pending = false;
  const render = () => {
    pending = false;
    lastRender = performance.now();
    const text = filter.value.toLowerCase();
    const showNs = r.namespaced && !S.ns;
    const cols = columns.map((c, i) => [c, i]).filter(([c]) => c.priority === 0 || c.priority === undefined);
    const body = [];
    let shown = 0, matched = 0;
    if (!order) order = [...rows.keys()].sort((a, b) => rows.get(a).sortKey < rows.get(b).sortKey ? -1 : rows.get(a).sortKey > rows.get(b).sortKey ? 1 : 0);
    for (const key of order) {
      const row = rows.get(key);
      if (text && !row.search.includes(text)) continue;
      matched++;
      if (shown >= 500) continue;
      shown++;
      body.push(el('tr', { 'data-name': row.name },
        showNs ? el('td', {}, row.ns) : null,
        cols.map(([c, i], k) => el('td', {}, k === 0 ? objLink(r, row.ns, row.name, String(row.cells[i])) : fmtCell(row.cells[i], c)))));
    }
    clear(holder).append(el('table', { class: 'grid', id: 'list-table' },
      el('tr', {}, showNs ? el('th', {}, 'Namespace') : null, cols.map(([c]) => el('th', { title: c.description || '' }, c.name))),
      body));
    count.textContent = `${matched} of ${rows.size}${matched > shown ? ` (first ${shown} shown)` : ''}`;
  };
  // A change shows at once; under a stream of changes, at most five renders a second.
  let lastRender = 0;
  const schedule = () => {
    if (pending) return;
    pending = true;
    setTimeout(render, Math.max(0, lastRender + 200 - performance.now()));
  };
  const take = (row) => {
    const m = (row.object && row.object.metadata) || {};
    const key = m.uid || `${m.namespace}/${m.name}`;
    if (!rows.has(key)) order = null;
    rows.set(key, { ns: m.namespace || '', name: m.name, sortKey: `${m.namespace || ''}/${m.name}`, cells: row.cells, search: (`${m.namespace || ''} ` + row.cells.join(' ')).toLowerCase() });
    return key;
  };
  const relist = async () => {
    const q = new URLSearchParams({ includeObject: 'Metadata' });
    if (labels.value.trim()) q.set('labelSelector', labels.value.trim());
    const t = await api(`${base}?${q}`, { headers: { Accept: TABLE } });
    columns = t.columnDefinitions; rows.clear(); order = null;
    for (const row of t.rows) take(row);
    rv = t.metadata.resourceVersion;
    render();
    startWatch();
  };
  let stop = null;
  const startWatch = () => {
    if (stop) stop();
    const params = { resourceVersion: rv, includeObject: 'Metadata' };
    if (labels.value.trim()) params.labelSelector = labels.value.trim();
    stop = watch(base, params, (ev) => {
      if (ev.type === 'BOOKMARK') { rv = ev.object.metadata.resourceVersion; return; }
      if (ev.type === 'ERROR') { relist().catch(() => {}); return; }
      const t = ev.object;
      if (t.columnDefinitions && t.columnDefinitions.length) columns = t.columnDefinitions;
      for (const row of t.rows || []) {
        const m = row.object.metadata;
        if (ev.type === 'DELETED') { rows.delete(m.uid || `${m.namespace}/${m.name}`); order = null; } else take(row);
        if (m.resourceVersion) rv = m.resourceVersion;
      }
      schedule();
    }, (err) => { if (S.cleanup.includes(stopAll)) setTimeout(() => relist().catch(() => {}), err ? 1000 : 0); }, TABLE);
  };
  const stopAll = () => { if (stop) stop(); stop = null; };
  S.cleanup.push(stopAll);
  filter.addEventListener('input', schedule);
  labels.addEventListener('change', () => relist().catch((e) => clear(holder).append(el('p', { class: 'error' }, errorText(e)))));
  await relist();
}

function fmtCell(v, col) {
  if (v === null || v === undefined) return '';
  if (col.format === 'date' || col.name === 'Age') return typeof v === 'string' && /\d{4}-/.test(v) ? age(v) : String(v);
  if (col.name === 'Status' || col.name === 'Ready') return el('span', { class: `pill ${v}` }, String(v));
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

// ---------- access checks ----------
async function can(verb, r, ns, subresource, name) {
  try {
    const review = await api('/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', {
      method: 'POST',
      body: { apiVersion: 'authorization.k8s.io/v1', kind: 'SelfSubjectAccessReview', spec: { resourceAttributes: { verb, group: r.group, resource: r.resource, subresource: subresource || '', namespace: r.namespaced ? ns || '' : '', name: name || '' } } },
    });
    return !!(review.status && review.status.allowed);
  } catch (_) { return false; }
}

// ---------- object pages ----------
const CHILDREN = {
  'apps/deployments': [['apps', 'replicasets']],
  'apps/replicasets': [['', 'pods']],
  'apps/statefulsets': [['', 'pods']],
  'apps/daemonsets': [['', 'pods']],
  'batch/jobs': [['', 'pods']],
  'batch/cronjobs': [['batch', 'jobs']],
};

async function objectView(main, group, resource, ns, name, tab) {
  const g = group === 'core' ? '' : group;
  const r = findRes(g, resource);
  if (!r) throw new Error(`${resource}.${group} is not served`);
  const path = objectPath(r, ns, name);
  const obj = await api(path);
  const m = obj.metadata;
  const isSecret = !g && resource === 'secrets';
  const tabs = ['summary', 'yaml', 'events'];
  if (!g && resource === 'pods') tabs.push('logs', 'exec');
  if (isSecret) tabs.splice(1, 0, 'data');
  const here = `#/obj/${group}/${resource}/${ns || '_'}/${encodeURIComponent(name)}`;
  const actions = el('div', { class: 'toolbar', id: 'object-actions' });
  main.append(el('h1', {}, `${obj.kind} `, el('span', { class: 'mono' }, ns ? `${ns}/${name}` : name)), actions,
    el('div', { class: 'tabs' }, tabs.map((t) => el('a', { href: `${here}/${t}`, class: t === tab ? 'active' : '' }, t))));
  const body = el('div', { id: 'tab-body' });
  main.append(body);
  buildActions(actions, r, ns, name, obj, here);
  if (tab === 'yaml') return yamlTab(body, r, ns, name, obj);
  if (tab === 'events') return eventsTab(body, r, ns, obj);
  if (tab === 'logs') return logsTab(body, ns, name, obj);
  if (tab === 'exec') return execTab(body, ns, name, obj);
  if (tab === 'data') return secretTab(body, obj);
  return summaryTab(body, r, ns, obj);
}

function buildActions(bar, r, ns, name, obj, here) {
  const add = (label, verb, sub, fn, cls) => {
    const b = el('button', { disabled: true, onclick: fn, class: cls, id: `action-${label.toLowerCase().replace(/\W+/g, '-')}` }, label);
    bar.append(b);
    can(verb, r, ns, sub, name).then((ok) => { b.disabled = !ok; if (!ok) b.title = `not allowed: ${verb} ${r.resource}${sub ? '/' + sub : ''}`; });
  };
  add('Edit YAML', 'patch', '', () => { location.hash = `${here}/yaml`; setTimeout(() => { const e = $('yaml-edit'); if (e) e.click(); }, 300); });
  if (r.subresources.has('scale')) add('Scale', 'patch', 'scale', () => scaleDialog(bar, r, ns, name, obj));
  if (['deployments', 'statefulsets', 'daemonsets'].includes(r.resource)) add('Restart', 'patch', '', () => restart(bar, r, ns, name));
  add('Delete', 'delete', '', () => deleteDialog(bar, r, ns, name), 'danger');
}

function say(bar, msg, bad) {
  let p = bar.parentNode.querySelector('.action-result');
  if (!p) { p = el('p', { class: 'action-result' }); bar.after(p); }
  p.className = `action-result ${bad ? 'error' : 'ok'}`;
  p.textContent = msg;
}

function scaleDialog(bar, r, ns, name, obj) {
  const input = el('input', { type: 'number', min: '0', value: (obj.spec && obj.spec.replicas) || 0, id: 'scale-replicas' });
  const go = el('button', { class: 'primary', id: 'scale-apply', onclick: async () => {
    try {
      await api(`${objectPath(r, ns, name)}/scale`, { method: 'PATCH', headers: { 'Content-Type': 'application/merge-patch+json' }, body: { spec: { replicas: parseInt(input.value, 10) } } });
      say(bar, `Scaled to ${input.value}.`);
    } catch (e) { say(bar, errorText(e), true); }
  } }, 'Set replicas');
  bar.append(input, go);
}

async function restart(bar, r, ns, name) {
  try {
    await api(objectPath(r, ns, name), { method: 'PATCH', headers: { 'Content-Type': 'application/strategic-merge-patch+json' }, body: { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': new Date().toISOString() } } } } } });
    say(bar, 'Rollout restarted.');
  } catch (e) { say(bar, errorText(e), true); }
}

function deleteDialog(bar, r, ns, name) {
  const sel = el('select', { id: 'delete-propagation' }, ['Background', 'Foreground', 'Orphan'].map((p) => el('option', { value: p }, p)));
  const go = el('button', { class: 'danger', id: 'delete-confirm', onclick: async () => {
    try {
      await api(objectPath(r, ns, name), { method: 'DELETE', body: { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: sel.value } });
      say(bar, `Deleted (${sel.value}).`);
    } catch (e) { say(bar, errorText(e), true); }
  } }, `Delete ${name}`);
  bar.append(el('span', {}, 'propagation '), sel, go);
}

function summaryTab(body, r, ns, obj) {
  const m = obj.metadata;
  const kv = (k, v) => el('tr', {}, el('td', {}, k), el('td', {}, v));
  const owners = (m.ownerReferences || []).map((o) => {
    const or = findKind(o.apiVersion, o.kind);
    return el('div', {}, `${o.kind} `, or ? objLink(or, ns, o.name) : o.name, o.controller ? ' (controller)' : '');
  });
  body.append(el('table', { class: 'grid kv' },
    kv('Name', m.name), r.namespaced ? kv('Namespace', m.namespace) : null, kv('UID', m.uid), kv('Created', `${m.creationTimestamp} (${age(m.creationTimestamp)} ago)`),
    kv('Labels', Object.entries(m.labels || {}).map(([k, v]) => el('span', { class: 'pill' }, `${k}=${v}`))),
    kv('Annotations', Object.entries(m.annotations || {}).filter(([k]) => k !== 'kubectl.kubernetes.io/last-applied-configuration').map(([k, v]) => el('div', { class: 'mono' }, `${k}: ${v}`))),
    owners.length ? kv('Owners', owners) : null,
    obj.status && obj.status.phase ? kv('Phase', el('span', { class: `pill ${obj.status.phase}` }, obj.status.phase)) : null));
  const conds = (obj.status && obj.status.conditions) || [];
  if (conds.length) {
    body.append(el('h2', {}, 'Conditions'), el('table', { class: 'grid', id: 'conditions' },
      el('tr', {}, ['Type', 'Status', 'Reason', 'Message', 'Last transition'].map((h) => el('th', {}, h))),
      conds.map((c) => el('tr', {}, el('td', {}, c.type), el('td', {}, el('span', { class: `pill ${c.status}` }, c.status)), el('td', {}, c.reason || ''), el('td', {}, c.message || ''), el('td', {}, age(c.lastTransitionTime))))));
  }
  if (obj.kind === 'Pod') {
    body.append(el('h2', {}, 'Containers'), el('table', { class: 'grid' },
      el('tr', {}, ['Name', 'Image', 'Ready', 'Restarts', 'State'].map((h) => el('th', {}, h))),
      ((obj.status && obj.status.containerStatuses) || obj.spec.containers.map((c) => ({ name: c.name, image: c.image }))).map((c) =>
        el('tr', {}, el('td', {}, c.name), el('td', {}, c.image), el('td', {}, String(!!c.ready)), el('td', {}, c.restartCount || 0), el('td', {}, Object.keys(c.state || {}).join(''))))));
  }
  const kids = CHILDREN[resKey(r.group, r.resource)];
  if (kids) {
    const holder = el('div', { id: 'owned' });
    body.append(el('h2', {}, 'Owns'), holder);
    for (const [cg, cr] of kids) {
      const cres = findRes(cg, cr);
      if (!cres) continue;
      api(collectionPath(cres, ns)).then((list) => {
        const mine = list.items.filter((o) => (o.metadata.ownerReferences || []).some((x) => x.uid === obj.metadata.uid));
        holder.append(el('div', {}, `${titleOf(cr)}: `, mine.length ? mine.map((o) => [objLink(cres, ns, o.metadata.name), ' ']) : 'none'));
      }).catch((e) => holder.append(el('div', { class: 'error' }, `${cr}: ${errorText(e)}`)));
    }
  }
  return eventsTab(body, r, ns, obj, true);
}

async function eventsTab(body, r, ns, obj, embedded) {
  if (embedded) body.append(el('h2', {}, 'Events'));
  const evr = findRes('', 'events');
  const path = collectionPath(evr, r.namespaced ? ns : '');
  const holder = el('div', { id: 'object-events' });
  body.append(holder);
  try {
    const list = await api(`${path}?fieldSelector=${encodeURIComponent(`involvedObject.uid=${obj.metadata.uid}`)}`);
    const items = list.items.sort((a, b) => Date.parse(b.lastTimestamp || b.eventTime || 0) - Date.parse(a.lastTimestamp || a.eventTime || 0));
    holder.append(items.length ? eventsTable(items) : el('p', { class: 'count' }, 'No events.'));
  } catch (e) { holder.append(el('p', { class: 'error' }, errorText(e))); }
}

// JSON -> YAML, enough for display and for editing back (the server parses YAML).
function toYaml(v, indent = '') {
  const scalar = (x) => {
    if (x === null) return 'null';
    if (typeof x === 'number' || typeof x === 'boolean') return String(x);
    const s = String(x);
    if (s === '' || /^[\s]|[\s]$|[:#\n"'{}[\],&*!|>%@`]|^[-?]|^(true|false|null|yes|no|on|off|~)$/i.test(s) || !isNaN(Number(s))) return JSON.stringify(s);
    return s;
  };
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return v.map((x) => {
      if (x !== null && typeof x === 'object' && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        const inner = toYaml(x, indent + '  ');
        return `${indent}- ${inner.slice(indent.length + 2)}`;
      }
      return `${indent}- ${typeof x === 'object' && x !== null ? (Array.isArray(x) ? '[]' : '{}') : scalar(x)}`;
    }).join('\n');
  }
  if (v !== null && typeof v === 'object') {
    const keys = Object.keys(v);
    if (!keys.length) return '{}';
    return keys.map((k) => {
      const x = v[k];
      const key = scalar(k);
      if (x !== null && typeof x === 'object' && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        return `${indent}${key}:\n${toYaml(x, Array.isArray(x) ? indent : indent + '  ')}`;
      }
      return `${indent}${key}: ${x !== null && typeof x === 'object' ? (Array.isArray(x) ? '[]' : '{}') : scalar(x)}`;
    }).join('\n');
  }
  return indent + scalar(v);
}

function forEditing(obj) {
  const o = JSON.parse(JSON.stringify(obj));
  delete o.metadata.managedFields;
  if (o.kind === 'Secret') {
    for (const k of Object.keys(o.data || {})) o.data[k] = '(hidden)';
  }
  return o;
}

function lineDiff(a, b) {
  // Longest common subsequence over lines: objects are small enough for O(n·m).
  const x = a.split('\n'), y = b.split('\n');
  const n = x.length, m = y.length;
  if (n * m > 4e6) return [['~', 'too large to diff']];
  const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push([' ', x[i]]); i++; j++; } else if (j < m && (i >= n || dp[i][j + 1] >= dp[i + 1][j])) { out.push(['+', y[j]]); j++; } else { out.push(['-', x[i]]); i++; }
  }
  return out;
}

function yamlTab(body, r, ns, name, obj) {
  const shown = forEditing(obj);
  const pre = el('pre', { class: 'yaml', id: 'yaml-view' }, toYaml(shown));
  const edit = el('button', { id: 'yaml-edit', disabled: true }, 'Edit');
  body.append(el('div', { class: 'toolbar' }, edit), pre);
  can('patch', r, ns, '', name).then((ok) => { edit.disabled = !ok; });
  edit.addEventListener('click', () => {
    if (obj.kind === 'Secret') { body.append(el('p', { class: 'notice' }, 'Secrets are edited with kubectl: their values stay hidden here.')); return; }
    const ta = el('textarea', { class: 'yaml', id: 'yaml-text', spellcheck: 'false' });
    ta.value = toYaml(shown);
    const out = el('div', { id: 'yaml-result' });
    const patchUrl = (dry) => `${objectPath(r, ns, name)}?fieldManager=nanokube-dashboard&force=true${dry ? '&dryRun=All' : ''}`;
    const send = (dry) => api(patchUrl(dry), { method: 'PATCH', headers: { 'Content-Type': 'application/apply-patch+yaml' }, body: ta.value });
    const review = el('button', { id: 'yaml-review', onclick: async () => {
      clear(out);
      try {
        const result = await send(true);
        const d = lineDiff(toYaml(shown), toYaml(forEditing(result)));
        const changed = d.filter(([t]) => t !== ' ');
        out.append(el('h2', {}, changed.length ? 'Changes (server dry run)' : 'No changes'),
          el('pre', { class: 'yaml diff', id: 'yaml-diff' }, d.filter(([t], i) => t !== ' ' || d.slice(Math.max(0, i - 2), i + 3).some(([u]) => u !== ' ')).map(([t, l]) => el('span', { class: t === '+' ? 'add' : t === '-' ? 'del' : '' }, `${t} ${l}\n`))),
          el('button', { class: 'primary', id: 'yaml-apply', onclick: async () => {
            try {
              const saved = await send(false);
              out.append(el('p', { class: 'ok', id: 'yaml-saved' }, `Saved: resourceVersion ${saved.metadata.resourceVersion}.`));
            } catch (e) { out.append(el('p', { class: 'error', id: 'yaml-error' }, errorText(e))); }
          } }, 'Apply'));
      } catch (e) { out.append(el('p', { class: 'error', id: 'yaml-error' }, errorText(e))); }
    } }, 'Review changes');
    clear(body).append(el('p', { class: 'count' }, 'Server-side apply as field manager "nanokube-dashboard". Keep metadata.resourceVersion to refuse the change if someone else changed the object first (409).'), ta, el('div', { class: 'toolbar' }, review), out);
  });
}

function secretTab(body, obj) {
  const data = obj.data || {};
  const rows = Object.keys(data).map((k) => {
    const val = el('span', { class: 'secret-value', 'data-key': k }, '••••••••');
    const btn = el('button', { class: 'reveal', onclick: () => {
      let text;
      try { text = new TextDecoder().decode(Uint8Array.from(atob(data[k]), (c) => c.charCodeAt(0))); } catch (_) { text = data[k]; }
      val.textContent = text; btn.disabled = true;
    } }, 'Reveal');
    return el('tr', {}, el('td', {}, k), el('td', {}, val), el('td', {}, btn));
  });
  body.append(el('p', { class: 'count' }, `type ${obj.type}: values stay hidden until you reveal one.`), el('table', { class: 'grid kv', id: 'secret-data' }, rows));
}

function logsTab(body, ns, name, pod) {
  const containers = pod.spec.containers.map((c) => c.name);
  const sel = el('select', { id: 'log-container' }, containers.map((c) => el('option', { value: c }, c)));
  const follow = el('input', { type: 'checkbox', checked: true, id: 'log-follow' });
  const prev = el('input', { type: 'checkbox', id: 'log-previous' });
  const out = el('pre', { class: 'log', id: 'log-output' });
  body.append(el('div', { class: 'toolbar' }, 'container ', sel, el('label', {}, follow, ' follow'), el('label', {}, prev, ' previous')), out);
  let ctrl = null;
  const load = async () => {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    clear(out);
    const q = new URLSearchParams({ container: sel.value, tailLines: '1000' });
    if (follow.checked && !prev.checked) q.set('follow', 'true');
    if (prev.checked) q.set('previous', 'true');
    try {
      const r = await fetch(`${S.base}/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}/log?${q}`, { credentials: 'same-origin', signal: ctrl.signal, cache: 'no-store' });
      if (!r.ok) { const j = await r.json().catch(() => ({})); out.append(`${r.status}: ${j.message || ''}`); return; }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out.append(dec.decode(value, { stream: true }));
        out.scrollTop = out.scrollHeight;
      }
    } catch (e) { if (e.name !== 'AbortError') out.append(`\n${e.message}`); }
  };
  for (const c of [sel, follow, prev]) c.addEventListener('change', load);
  S.cleanup.push(() => ctrl && ctrl.abort());
  load();
}

// The terminal: xterm.js over the exec WebSocket (v5.channel.k8s.io: a channel byte,
// then data; 0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize).
const TERM_COLS = 120, TERM_ROWS = 32;
function execTab(body, ns, name, pod) {
  const containers = pod.spec.containers.map((c) => c.name);
  const sel = el('select', { id: 'exec-container' }, containers.map((c) => el('option', { value: c }, c)));
  const cmd = el('input', { value: 'sh', id: 'exec-command' });
  const holder = el('div', { class: 'terminal', id: 'terminal' });
  const status = el('span', { class: 'count', id: 'exec-status' });
  const connect = el('button', { id: 'exec-connect' }, 'Connect');
  body.append(el('div', { class: 'toolbar' }, 'container ', sel, 'command ', cmd, connect, status), holder);
  const term = new window.Terminal({ cols: TERM_COLS, rows: TERM_ROWS, cursorBlink: true, fontSize: 13, scrollback: 5000 });
  term.open(holder);
  let ws = null;
  const enc = new TextEncoder();
  const frame = (channel, bytes) => { const f = new Uint8Array(bytes.length + 1); f[0] = channel; f.set(bytes, 1); return f; };
  term.onData((d) => { if (ws && ws.readyState === 1) ws.send(frame(0, enc.encode(d))); });
  connect.addEventListener('click', () => {
    if (ws) ws.close();
    term.reset();
    const q = new URLSearchParams({ container: sel.value, stdin: 'true', stdout: 'true', stderr: 'true', tty: 'true' });
    for (const part of cmd.value.trim().split(/\s+/)) q.append('command', part);
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    ws = new WebSocket(`${proto}://${location.host}${S.base}/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}/exec?${q}`, ['v5.channel.k8s.io', 'v4.channel.k8s.io']);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      status.textContent = `connected (${ws.protocol})`;
      ws.send(frame(4, enc.encode(JSON.stringify({ Width: TERM_COLS, Height: TERM_ROWS }))));
      term.focus();
    };
    ws.onmessage = (m) => {
      const b = new Uint8Array(m.data);
      if (!b.length) return;
      if (b[0] === 1 || b[0] === 2) term.write(b.subarray(1));
      if (b[0] === 3) { const t = new TextDecoder().decode(b.subarray(1)); try { const st = JSON.parse(t); status.textContent = st.status === 'Success' ? 'exited' : `exited: ${st.message || t}`; } catch (_) { status.textContent = t; } }
    };
    ws.onclose = (e) => { if (!/exited/.test(status.textContent)) status.textContent = `closed${e.code !== 1000 ? ` (${e.code})` : ''}`; };
    ws.onerror = () => { status.textContent = 'connection failed'; };
  });
  S.cleanup.push(() => { if (ws) ws.close(); term.dispose(); });
}

// ---------- create ----------
function createView(main) {
  const ta = el('textarea', { class: 'yaml', id: 'create-text', spellcheck: 'false', placeholder: 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: example\ndata:\n  key: value' });
  const out = el('div', { id: 'create-result' });
  const go = el('button', { class: 'primary', id: 'create-submit', onclick: async () => {
    clear(out);
    const text = ta.value;
    const top = (k) => { const m = new RegExp(`^${k}:\\s*["']?([^"'\\s#]+)`, 'm').exec(text); return m && m[1]; };
    const metaField = (k) => { const m = new RegExp(`^metadata:[\\s\\S]*?^\\s+${k}:\\s*["']?([^"'\\s#]+)`, 'm').exec(text); return m && m[1]; };
    const apiVersion = top('apiVersion'), kind = top('kind');
    if (!apiVersion || !kind) { out.append(el('p', { class: 'error' }, 'apiVersion and kind are required')); return; }
    const r = findKind(apiVersion, kind);
    if (!r) { out.append(el('p', { class: 'error' }, `${kind} in ${apiVersion} is not served`)); return; }
    const ns = metaField('namespace') || S.ns || 'default';
    try {
      const o = await api(collectionPath(r, ns), { method: 'POST', headers: { 'Content-Type': 'application/yaml' }, body: text });
      out.append(el('p', { class: 'ok' }, 'Created ', objLink(r, o.metadata.namespace, o.metadata.name, `${o.kind} ${o.metadata.name}`)));
    } catch (e) { out.append(el('p', { class: 'error' }, errorText(e))); }
  } }, 'Create');
  main.append(el('h1', {}, 'Create from YAML'), ta, el('div', { class: 'toolbar' }, go), out);
}

// ---------- who can ----------
async function canView(main) {
  main.append(el('h1', {}, 'Who can do what'));
  const ns = S.ns || 'default';
  const mine = await api('/apis/authorization.k8s.io/v1/selfsubjectrulesreviews', { method: 'POST', body: { apiVersion: 'authorization.k8s.io/v1', kind: 'SelfSubjectRulesReview', spec: { namespace: ns } } });
  main.append(el('h2', {}, `What ${S.user.username} may do in namespace ${ns}`), el('table', { class: 'grid', id: 'my-rules' },
    el('tr', {}, ['Verbs', 'API groups', 'Resources', 'Names'].map((h) => el('th', {}, h))),
    (mine.status.resourceRules || []).map((r) => el('tr', {}, el('td', {}, (r.verbs || []).join(', ')), el('td', {}, (r.apiGroups || []).map((g) => g || 'core').join(', ')), el('td', {}, (r.resources || []).join(', ')), el('td', {}, (r.resourceNames || []).join(', '))))));
  // Who may: bindings that grant a verb on a resource (read from RBAC objects, when allowed).
  const verb = el('input', { value: 'get', id: 'who-verb' });
  const resource = el('input', { value: 'pods', id: 'who-resource' });
  const out = el('div', { id: 'who-result' });
  const run = async () => {
    clear(out);
    try {
      const [crs, crbs, rs, rbs] = await Promise.all([
        api('/apis/rbac.authorization.k8s.io/v1/clusterroles'), api('/apis/rbac.authorization.k8s.io/v1/clusterrolebindings'),
        api(`/apis/rbac.authorization.k8s.io/v1/namespaces/${encodeURIComponent(ns)}/roles`), api(`/apis/rbac.authorization.k8s.io/v1/namespaces/${encodeURIComponent(ns)}/rolebindings`)]);
      const grants = (role) => (role.rules || []).some((r) => (r.verbs || []).some((v) => v === '*' || v === verb.value) && (r.resources || []).some((x) => x === '*' || x === resource.value));
      const byName = (list) => new Map(list.items.map((x) => [x.metadata.name, x]));
      const cr = byName(crs), rl = byName(rs);
      const rows = [];
      for (const b of [...crbs.items, ...rbs.items]) {
        const role = b.roleRef.kind === 'ClusterRole' ? cr.get(b.roleRef.name) : rl.get(b.roleRef.name);
        if (role && grants(role)) for (const s of b.subjects || []) rows.push(el('tr', {}, el('td', {}, s.kind), el('td', {}, s.namespace ? `${s.namespace}/${s.name}` : s.name), el('td', {}, `${b.kind}/${b.metadata.name}`), el('td', {}, `${b.roleRef.kind}/${b.roleRef.name}`)));
      }
      out.append(el('table', { class: 'grid' }, el('tr', {}, ['Kind', 'Subject', 'Binding', 'Role'].map((h) => el('th', {}, h))), rows));
    } catch (e) { out.append(el('p', { class: 'error' }, `Reading RBAC objects: ${errorText(e)}`)); }
  };
  main.append(el('h2', {}, `Who may, in namespace ${ns}`), el('div', { class: 'toolbar' }, 'verb ', verb, 'resource ', resource, el('button', { onclick: run }, 'Show')), out);
}

// ---------- access map ----------
async function mapView(main) {
  main.append(el('h1', {}, 'Access map'), el('p', { class: 'count' }, 'Who reached the API, how they authenticated, and what they were allowed to touch: live from the API server\'s request stream.'));
  const holder = el('div', { id: 'map-holder' });
  const detail = el('div', { id: 'map-detail' });
  main.append(holder, detail);
  const draw = async () => {
    const svg = await api('/access-map?format=svg', { headers: { Accept: 'image/svg+xml' } });
    const doc = new DOMParser().parseFromString(svg, 'image/svg+xml');
    const node = document.importNode(doc.documentElement, true);
    node.classList.add('map');
    node.addEventListener('click', (e) => {
      const t = e.target.closest('[data-detail]');
      if (!t) return;
      for (const s of node.querySelectorAll('.selected')) s.classList.remove('selected');
      (t.querySelector('rect,path') || t).classList.add('selected');
      clear(detail).append(el('h2', {}, t.getAttribute('data-title') || ''), el('pre', { class: 'yaml', id: 'map-detail-text' }, t.getAttribute('data-detail')));
    });
    clear(holder).append(node);
  };
  await draw();
  const timer = setInterval(() => draw().catch(() => {}), 2000);
  S.cleanup.push(() => clearInterval(timer));
}

start();
