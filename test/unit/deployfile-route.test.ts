/**
 * Routed services in deployment files: route, strategy, drain and canary (snake_case in the file,
 * the manifest's camelCase after), each problem at its line.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ServiceSpecSchema } from '@ferry/protocol';
import { formatProblem, parseDeploymentText, type DeploymentDocument, type Problem } from '@ferry/sender';
import { serviceSpecOf } from '../../services/sender/src/deployfile/index.ts';

function file(extra: string): string {
  return `version: 1
services:
  web:
    image: myapp:1.2
    targets: [http://10.0.0.5:7701]
${extra}`;
}

function ok(text: string): DeploymentDocument {
  const result = parseDeploymentText(text, { baseDir: '/srv/app' });
  assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
  return result.document;
}

function problems(text: string): Problem[] {
  const result = parseDeploymentText(text, { baseDir: '/srv/app' });
  assert.ok(!result.ok, 'expected problems');
  return result.problems;
}

describe('deployment file: routed services', () => {
  test('route, strategy, drain and canary map to the service spec', () => {
    const doc = ok(file(`    route: {host: app.example.com, path: /api, port: 8080, tls: true}
    strategy: start-first
    drain: 30s
    canary: {weight: 10%, for: 2m, max_error_rate: 1%, min_requests: 20}
`));
    const entry = doc.services.web;
    assert.ok(entry);
    const spec = ServiceSpecSchema.parse(serviceSpecOf('web', entry));
    assert.deepEqual(spec.route, { host: 'app.example.com', path: '/api', port: 8080, tls: true });
    assert.equal(spec.strategy, 'start-first');
    assert.equal(spec.drain, 30_000);
    assert.deepEqual(spec.canary, { weight: 10, forMs: 120_000, maxErrorRate: 1, minRequests: 20 });
  });

  test('a route alone is start-first on the default bridge network', () => {
    const entry = ok(file('    route: {path: /, port: 80}\n')).services.web;
    assert.equal(entry?.network, 'bridge');
    assert.equal(entry?.strategy, undefined);
  });

  test('each problem names its line', () => {
    const cases: [string, number, RegExp][] = [
      ['    route: {host: "App.Example.com:80", port: 8080}\n', 6, /host name/],
      ['    route: {path: /../etc, port: 8080}\n', 6, /path|"\.\."/],
      ['    route:\n      path: /\n      port: 70000\n', 8, /65535|less than/],
      ['    route:\n      path: /\n      port: 80\n      sticky: true\n', 9, /unknown field.*known: host, path, port, tls/],
      ['    route: {port: 80}\n', 6, /host, a path, or both/],
      ['    route: {path: /, port: 80}\n    network: host\n', 6, /bridge network/],
      ['    strategy: start-first\n', 6, /needs a route/],
      ['    strategy: blue-green\n', 6, /start-first|stop-first/],
      ['    drain: 30s\n', 6, /route/],
      ['    route: {path: /, port: 80}\n    drain: forever\n', 7, /duration/],
      ['    route: {path: /, port: 80}\n    drain: 2h\n', 7, /duration/],
      ['    route: {path: /, port: 80}\n    strategy: stop-first\n    canary: {weight: 10%, for: 2m, max_error_rate: 1%}\n', 8, /start-first/],
      ['    route: {path: /, port: 80}\n    canary:\n      weight: 100%\n      for: 2m\n      max_error_rate: 1%\n', 8, /99|less than/],
      ['    route: {path: /, port: 80}\n    canary:\n      weight: 10%\n      for: soon\n      max_error_rate: 1%\n', 9, /duration/],
      ['    route: {path: /, port: 80}\n    canary:\n      weight: 10%\n      forMs: 2m\n      max_error_rate: 1%\n', 9, /did you mean for/],
      ['    update_config: start-first\n', 6, /did you mean strategy/],
    ];
    for (const [extra, line, message] of cases) {
      const found = problems(file(extra));
      const hit = found.find((p) => p.line === line && message.test(p.message));
      assert.ok(hit, `${extra.trim()}: ${found.map((p) => formatProblem(p, 'ferry.yaml')).join(' | ')}`);
    }
  });
});
