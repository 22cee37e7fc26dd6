// The Ferry registry dashboard. Plain browser JavaScript, no build step: it receives a snapshot
// and then live changes over server-sent events (GET dashboard/events) and redraws from its own
// copy of the state. Registry data only ever reaches the page as text nodes and attribute values
// (element.append(string), setAttribute), never as markup.

const MAX_DEPLOYMENTS = 30;
const MAX_EVENTS = 100;
const DEPLOYMENT_STATES = new Set(['running', 'succeeded', 'failed', 'rolled_back']);
const HOST_STATES = new Set(['online', 'lost']);
const RELEASE_STATES = new Set(['in-progress', 'paused', 'completed', 'failed', 'rolling-back', 'rolled-back']);
const MAX_RELEASES = 20;
// Drawn in this order in a release's progress bar; `pending` is what is left of it.
const OUTCOMES = ['healthy', 'deploying', 'failed', 'skipped', 'rolled-back', 'rollback-failed', 'pending'];

const state = {
  hosts: new Map(), // id → HostRecord
  services: new Map(), // host + '\u0000' + service → DashboardService
  deployments: new Map(), // deploymentId + '\u0000' + host → DeploymentSummary (one id may go to many hosts)
  events: [], // FeedEntry, newest first
  releases: new Map(), // release id → ReleaseSummary
  quality: new Map(), // service → ServiceQuality
};

/** Builds an element; children that are strings become text nodes. */
function h(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** `sha256:0123…` shortened to 12 hex digits; the whole value stays in the tooltip. */
function short(value) {
  if (typeof value !== 'string') return value === undefined || value === null ? '—' : String(value);
  const match = /^sha256:([0-9a-f]{12})[0-9a-f]*$/.exec(value);
  return match ? match[1] : value;
}

function ago(iso) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return '—';
  const seconds = Math.max(0, Math.round((Date.now() - then) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

function time(iso, shown) {
  return h('time', { datetime: iso, title: iso }, shown ?? ago(iso));
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '—' : date.toLocaleTimeString();
}

function badge(kind, value, known) {
  const safe = known.has(value) ? value : 'other';
  return h('span', { class: `badge ${kind}-${safe}` }, value ?? '—');
}

function serviceKey(service) {
  return `${service.host}\u0000${service.service}`;
}

function deploymentKey(deployment) {
  return `${deployment.deploymentId}\u0000${deployment.host}`;
}

function newestDeployments() {
  return [...state.deployments.values()]
    .sort((a, b) => (b.startedAt ?? '').localeCompare(a.startedAt ?? ''))
    .slice(0, MAX_DEPLOYMENTS);
}

// ---- rendering ----

function renderHosts() {
  const byHost = new Map();
  for (const service of state.services.values()) {
    if (!byHost.has(service.host)) byHost.set(service.host, []);
    byHost.get(service.host).push(service);
  }
  const ids = [...state.hosts.keys()].sort();
  const online = [...state.hosts.values()].filter((host) => host.status === 'online').length;
  document.getElementById('host-count').textContent = state.hosts.size > 0 ? `${online} online / ${state.hosts.size}` : '';
  const container = document.getElementById('hosts');
  if (ids.length === 0) container.replaceChildren(h('p', { class: 'empty' }, 'No host has registered yet.'));
  else container.replaceChildren(...ids.map((id) => hostCard(state.hosts.get(id), byHost.get(id) ?? [])));

  // The event stream names every host that ever deployed; those that never registered (or were
  // forgotten) stay folded away so that the fleet that is there now is what the page shows first.
  const others = [...byHost.entries()].filter(([id]) => !state.hosts.has(id)).flatMap(([, services]) => services);
  const details = document.getElementById('unregistered');
  details.hidden = others.length === 0;
  document.getElementById('unregistered-count').textContent = `(${others.length})`;
  document.getElementById('unregistered-services').replaceChildren(others.length === 0 ? '' : servicesTable(others, true));
}

function hostCard(host, services) {
  const labels = Object.entries(host.labels ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const header = h('header', {},
    h('h3', {}, host.id),
    badge('host', host.status, HOST_STATES),
    h('span', { class: 'meta' }, `ferry ${host.version}`),
    host.engine ? h('span', { class: 'meta' }, `docker ${host.engine.version} · ${host.engine.imageStore}`) : null,
    h('span', { class: 'meta' }, 'last seen ', time(host.lastSeenAt)),
  );
  const details = h('div', { class: 'host-details' },
    h('span', { class: 'url' }, host.url),
    labels.map(([key, value]) => h('span', { class: 'label' }, `${key}=${value}`)),
  );
  const table = services.length === 0 ? h('p', { class: 'empty' }, 'No service known on this host.') : servicesTable(services, false);
  const status = HOST_STATES.has(host.status) ? host.status : 'other';
  return h('article', { class: `host is-${status}`, 'data-host': host.id }, header, details, table);
}

function servicesTable(services, withHost) {
  const rows = [...services]
    .sort((a, b) => a.host.localeCompare(b.host) || a.service.localeCompare(b.service))
    .map((service) => serviceRow(service, withHost));
  const titles = [withHost ? 'host' : null, 'service', 'desired image', 'actual image', 'state', 'drift'].filter(Boolean);
  return h('table', { class: 'services' },
    h('thead', {}, h('tr', {}, titles.map((title) => h('th', {}, title)))),
    h('tbody', {}, rows));
}

function serviceRow(service, withHost) {
  const desired = service.desired;
  const actual = service.actual;
  const drift = service.drift;
  const reasons = drift ? drift.reasons.map((reason) => h('li', { title: `since ${drift.since}` },
    h('strong', {}, reason.field), ': wants ', h('code', {}, short(reason.desired)), ', has ', h('code', {}, short(reason.actual)))) : [];
  return h('tr', { class: drift ? 'drift' : undefined, 'data-service': service.service },
    withHost ? h('td', {}, service.host) : null,
    h('td', {}, service.service),
    h('td', { title: desired?.imageId ?? '' }, desired ? desired.image : '—', desired ? h('div', { class: 'sub' }, short(desired.imageId)) : null),
    h('td', { title: actual?.imageId ?? '' }, actual?.image ?? '—', actual?.imageId ? h('div', { class: 'sub' }, short(actual.imageId)) : null),
    h('td', {}, actual ? actual.state : '—', service.lastDeployment ? h('div', { class: 'sub' }, 'last deploy ', badge('deployment', service.lastDeployment.state, DEPLOYMENT_STATES)) : null),
    h('td', {}, drift ? h('ul', { class: 'reasons' }, reasons, h('li', { class: 'sub' }, `mode ${drift.mode}`)) : 'in sync'),
  );
}

function renderDeployments() {
  const newest = newestDeployments();
  const body = document.querySelector('#deployments tbody');
  if (newest.length === 0) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No deployment yet.')));
    return;
  }
  body.replaceChildren(...newest.map((deployment) => h('tr', {
    'data-deployment-id': deployment.deploymentId, 'data-host': deployment.host, 'data-state': deployment.state,
    title: deployment.error ? `${deployment.error.code}: ${deployment.error.reason}` : deployment.deploymentId,
  },
  h('td', {}, badge('deployment', deployment.state, DEPLOYMENT_STATES)),
  h('td', {}, deployment.service),
  h('td', {}, deployment.host),
  h('td', { title: deployment.imageId ?? '' }, deployment.image ?? short(deployment.imageId)),
  h('td', {}, time(deployment.startedAt, clock(deployment.startedAt))),
  h('td', {}, deployment.lastEvent, deployment.error ? h('div', { class: 'sub error' }, deployment.error.code) : null),
  )));
}

function newestReleases() {
  // Release ids sort as the releases were made.
  return [...state.releases.values()].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)).slice(0, MAX_RELEASES);
}

function renderReleases() {
  const body = document.querySelector('#releases tbody');
  const newest = newestReleases();
  if (newest.length === 0) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No release yet.')));
    return;
  }
  body.replaceChildren(...newest.map((release) => {
    const counts = release.outcomes ?? {};
    const total = OUTCOMES.reduce((n, outcome) => n + (counts[outcome] ?? 0), 0);
    const done = (counts.healthy ?? 0) + (counts['rolled-back'] ?? 0);
    const bar = h('div', { class: 'progress', role: 'img', 'aria-label': `${done} of ${total}` },
      OUTCOMES.filter((outcome) => (counts[outcome] ?? 0) > 0 && outcome !== 'pending').map((outcome) => h('span', {
        class: `outcome-${outcome}`, title: `${outcome}: ${counts[outcome]}`, 'data-width': counts[outcome] / total,
      })));
    const told = OUTCOMES.filter((outcome) => (counts[outcome] ?? 0) > 0).map((outcome) => `${counts[outcome]} ${outcome}`).join(' · ');
    return h('tr', {
      'data-release-id': release.id, 'data-state': release.state,
      title: release.error ? `${release.error.code}: ${release.error.message}` : release.id,
    },
    h('td', {}, badge('release', release.state, RELEASE_STATES)),
    h('td', {}, h('code', {}, release.id), release.rolledBackTo ? h('div', { class: 'sub' }, `back to ${release.rolledBackTo}`) : null),
    h('td', {}, release.project || '—'),
    h('td', { class: 'release-progress' }, bar, h('div', { class: 'sub' }, told || '—'), release.error ? h('div', { class: 'sub error' }, release.error.code) : null),
    h('td', { title: (release.services ?? []).join(', ') }, String((release.services ?? []).length)),
    h('td', { title: (release.hosts ?? []).join(', ') }, String((release.hosts ?? []).length)),
    h('td', {}, time(release.createdAt, clock(release.createdAt))),
    );
  }));
  // Widths through the CSSOM: the page's CSP allows no inline style attribute.
  for (const span of body.querySelectorAll('.progress span')) span.style.width = `${Number(span.dataset.width) * 100}%`;
}

function percent(rate) {
  return rate === null || rate === undefined ? '—' : `${Math.round(rate * 1000) / 10} %`;
}

function ms(value) {
  if (value === null || value === undefined) return '—';
  return value < 1000 ? `${value} ms` : `${Math.round(value / 100) / 10} s`;
}

function renderQuality() {
  const body = document.querySelector('#quality tbody');
  const services = [...state.quality.values()].sort((a, b) => a.service.localeCompare(b.service));
  if (services.length === 0) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No deployment yet.')));
    return;
  }
  body.replaceChildren(...services.map((q) => h('tr', { 'data-service': q.service },
    h('td', {}, q.service),
    h('td', {}, String(q.deployments)),
    h('td', { class: 'success-rate', title: `${q.succeeded} of ${q.finished} finished` }, percent(q.successRate)),
    h('td', { class: 'p50' }, ms(q.p50DurationMs)),
    h('td', { class: 'p95' }, ms(q.p95DurationMs)),
    h('td', { class: 'rollbacks' }, q.rollbacks === 0 ? '—' : `${q.rollbacksRestored} of ${q.rollbacks} (${percent(q.rollbackEffectiveness)})`),
  )));
}

function renderEvents() {
  const list = document.getElementById('events');
  list.replaceChildren(...state.events.map((event) => h('li', {
    'data-event-id': event.id, 'data-type': event.type, 'data-deployment': event.deploymentId, class: /failed|denied|lost|drift/.test(event.type) ? 'bad' : undefined,
  },
  time(event.time, clock(event.time)),
  h('span', { class: 'type' }, event.type.replace(/^ferry\./, '')),
  h('span', {}, [event.project, event.host, event.service].filter(Boolean).join(' / ')),
  event.releaseId ? h('code', { class: 'release' }, event.releaseId) : null,
  event.image ? h('code', {}, event.image) : null,
  event.code || event.reason ? h('span', { class: 'error' }, [event.code, event.reason].filter(Boolean).join(': ')) : null,
  )));
}

const dirty = new Set();
let scheduled = false;

/** Coalesces a burst of changes into one redraw per frame. */
function redraw(...parts) {
  for (const part of parts) dirty.add(part);
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    if (dirty.has('hosts')) renderHosts();
    if (dirty.has('deployments')) renderDeployments();
    if (dirty.has('events')) renderEvents();
    if (dirty.has('releases')) renderReleases();
    if (dirty.has('quality')) renderQuality();
    dirty.clear();
  });
}

// ---- state ----

function applySnapshot(snapshot) {
  state.hosts = new Map(snapshot.hosts.map((host) => [host.id, host]));
  state.services = new Map(snapshot.services.map((service) => [serviceKey(service), service]));
  state.deployments = new Map(snapshot.deployments.map((deployment) => [deploymentKey(deployment), deployment]));
  state.events = snapshot.events.slice(0, MAX_EVENTS);
  state.releases = new Map((snapshot.releases ?? []).map((release) => [release.id, release]));
  state.quality = new Map((snapshot.quality ?? []).map((q) => [q.service, q]));
  redraw('hosts', 'deployments', 'events', 'releases', 'quality');
}

function addEvent(event) {
  if (state.events.some((known) => known.id === event.id)) return;
  // Newest first by event time: a replayed old event goes below the recent ones (or off the end).
  const at = state.events.findIndex((known) => known.time <= event.time);
  state.events.splice(at === -1 ? state.events.length : at, 0, event);
  state.events.length = Math.min(state.events.length, MAX_EVENTS);
  redraw('events');
}

function setConnection(name, label) {
  const node = document.getElementById('connection');
  node.dataset.state = name;
  node.textContent = label;
}

function connect() {
  const source = new EventSource('dashboard/events');
  const on = (type, apply) => source.addEventListener(type, (message) => apply(JSON.parse(message.data)));
  on('snapshot', (snapshot) => {
    applySnapshot(snapshot);
    setConnection('live', 'live');
  });
  on('host', (host) => {
    state.hosts.set(host.id, host);
    redraw('hosts');
  });
  on('service', (service) => {
    state.services.set(serviceKey(service), service);
    redraw('hosts');
  });
  on('deployment', (deployment) => {
    state.deployments.set(deploymentKey(deployment), deployment);
    // A page left open for days must not keep every deployment it ever saw.
    if (state.deployments.size > 4 * MAX_DEPLOYMENTS) {
      state.deployments = new Map(newestDeployments().map((kept) => [deploymentKey(kept), kept]));
    }
    redraw('deployments');
  });
  on('release', (release) => {
    state.releases.set(release.id, release);
    if (state.releases.size > 4 * MAX_RELEASES) state.releases = new Map(newestReleases().map((kept) => [kept.id, kept]));
    redraw('releases');
  });
  on('quality', (quality) => {
    state.quality.set(quality.service, quality);
    redraw('quality');
  });
  on('event', addEvent);
  source.addEventListener('error', () => {
    // CLOSED means the server refused the stream (e.g. the session ended); the browser gave up.
    if (source.readyState === EventSource.CLOSED) setConnection('closed', 'disconnected — reload the page');
    else setConnection('reconnecting', 'reconnecting…');
  });
}

connect();
// "last seen 5s ago" must keep counting while nothing changes.
setInterval(() => redraw('hosts'), 5000);
