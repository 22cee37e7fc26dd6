/**
 * The dashboard's only HTML: a static shell. Every piece of registry data is added by
 * `assets/app.js` as DOM text nodes, never parsed as markup, so nothing a host reports can inject
 * into the page. Paths are relative, so the page also works behind a proxy that adds a prefix.
 */
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Ferry registry</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="dashboard/app.css">
<script type="module" src="dashboard/app.js"></script>
</head>
<body>
<header>
  <h1>Ferry registry</h1>
  <span id="connection" class="connection" data-state="connecting">connecting…</span>
</header>
<main>
  <section aria-labelledby="hosts-title">
    <h2 id="hosts-title">Hosts <span id="host-count" class="count"></span></h2>
    <div id="hosts" class="hosts"><p class="empty">No host has registered yet.</p></div>
    <details id="unregistered" hidden>
      <summary>Services on hosts that are not registered <span id="unregistered-count" class="count"></span></summary>
      <div id="unregistered-services"></div>
    </details>
  </section>
  <section aria-labelledby="releases-title">
    <h2 id="releases-title">Releases</h2>
    <table id="releases">
      <thead><tr><th>state</th><th>release</th><th>project</th><th>progress</th><th>services</th><th>hosts</th><th>started</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section aria-labelledby="quality-title">
    <h2 id="quality-title">Service quality <span class="count">(last deployments of each service)</span></h2>
    <table id="quality">
      <thead><tr><th>service</th><th>deployments</th><th>success rate</th><th>p50</th><th>p95</th><th>rollbacks that restored</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section aria-labelledby="deployments-title">
    <h2 id="deployments-title">Recent deployments</h2>
    <table id="deployments">
      <thead><tr><th>state</th><th>service</th><th>host</th><th>image</th><th>started</th><th>last step</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section aria-labelledby="events-title">
    <h2 id="events-title">Live events</h2>
    <ol id="events" class="events"></ol>
  </section>
</main>
</body>
</html>
`;
