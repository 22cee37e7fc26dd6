/**
 * The failure report's two ends as pure logic: what the receiver keeps of a container's output
 * (plain bounded lines, no env value of the manifest, whatever the container printed) and how the
 * CLI prints a report (every probe counted, log lines that cannot forge lines of their own, a
 * `next:` line that follows from what failed). The real flow is test/integration/failure-report.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { FAILURE_LIMITS, plainLine, type DeploymentFailure, type ProbeResult } from '@ferry/protocol';
import { Scrubber } from '../../services/receiver/src/deploy/failure.ts';
import { failureLines, type FailedDeployment } from '../../apps/cli/src/failure.ts';

const HOSTILE = '\x1b[31mred\x1b[0m \x1b]0;title\x07\x1b[2J bell\x07 cr\rback \x9b31m \u202eevil\ttab';

function assertPlain(text: string): void {
  assert.ok(!/[\p{Cc}\u202a-\u202e\u2066-\u2069]/u.test(text), `a control character in ${JSON.stringify(text)}`);
}

describe('what the receiver keeps of a container\'s output', () => {
  test('plainLine: escape sequences go whole, other controls and bidi overrides go, tabs and breaks become spaces', () => {
    const line = plainLine(HOSTILE);
    assertPlain(line);
    assert.equal(line, 'red  bell crback 31m evil tab');
    assert.equal(plainLine('a\nb\u2028c'), 'a b c');
  });

  test('plainLine cuts long lines with an ellipsis, never inside a surrogate pair', () => {
    assert.equal(plainLine('abcdef', 4), 'abc…');
    const cut = plainLine(`ab${'😀'.repeat(5)}`, 4);
    assert.ok(cut.length <= 4 && cut.endsWith('…'));
    assert.ok(!/[\ud800-\udbff]…$/.test(cut), 'no half character before the ellipsis');
  });

  test('every env value of 4 characters or more is replaced by its name, also split across lines or behind escapes', () => {
    const scrub = new Scrubber({ API_TOKEN: 's3cret-token', DB_URL: 'postgres://u:pw@db/x', KEY: 'line-one\nline-two', PORT: '80', EMPTY: '' });
    assert.equal(scrub.line('token=s3cret-token ok', 500), 'token=${API_TOKEN} ok');
    assert.equal(scrub.line('token=s3cr\x1b[0met-token', 500), 'token=${API_TOKEN}', 'an escape sequence does not hide a value');
    assert.equal(scrub.line('connecting to postgres://u:pw@db/x', 500), 'connecting to ${DB_URL}');
    assert.equal(scrub.line('key: line-two', 500), 'key: ${KEY}', 'one line of a value that has several');
    assert.equal(scrub.line('listening on :80', 500), 'listening on :80', 'short values are no secrets and stay');
    const long = scrub.line(`${'x'.repeat(600)}s3cret-token`, FAILURE_LIMITS.logLineChars);
    assert.equal(long.length, FAILURE_LIMITS.logLineChars, 'cut to the bound');
    assert.ok(!long.includes('s3cret'));
  });

  test('a value that holds another is replaced whole', () => {
    const scrub = new Scrubber({ SHORT: 'abcd', LONG: 'abcd-efgh-ijkl' });
    assert.equal(scrub.line('abcd-efgh-ijkl and abcd', 500), '${LONG} and ${SHORT}');
  });

  test('probe errors are scrubbed, cut, and only the newest kept', () => {
    const scrub = new Scrubber({ PASSWORD: 'hunter22' });
    const probes: ProbeResult[] = Array.from({ length: 30 }, (_, i) => ({ at: `t${i}`, ok: false, ms: 1, error: `exit 1: pw=hunter22 ${'y'.repeat(300)}` }));
    const kept = scrub.probes(probes);
    assert.equal(kept.length, FAILURE_LIMITS.probes);
    assert.equal(kept[0]?.at, 't20');
    for (const p of kept) {
      assert.ok(!p.error?.includes('hunter22'));
      assert.ok((p.error?.length ?? 0) <= FAILURE_LIMITS.probeErrorChars);
    }
  });
});

describe('the CLI\'s report', () => {
  const failure = (extra: Partial<DeploymentFailure> = {}): DeploymentFailure => ({
    stage: 'VALIDATING',
    container: { id: 'a'.repeat(64), status: 'exited', exitCode: 1, restarts: 0, logs: ['booting', 'fatal: no config'] },
    health: { type: 'http', attempts: 30, probes: Array.from({ length: 10 }, () => ({ at: 't', ok: false, status: 404, ms: 1 })) },
    restored: { outcome: 'previous', containerId: 'b'.repeat(64) },
    ...extra,
  });
  const report = (f: Partial<FailedDeployment> = {}): string[] => failureLines({
    error: { code: 'FERRY_ERR_HEALTHCHECK_FAILED', message: 'Health check failed' }, service: 'web', host: 'edge-1', url: 'http://h:7701',
    deploymentId: 'd-1', state: 'ROLLED_BACK', failure: failure(), ...f,
  });

  test('every part: what, where, the container, the probes counted in full, its log, what runs now, what next', () => {
    assert.deepEqual(report(), [
      '✖ Health check failed [FERRY_ERR_HEALTHCHECK_FAILED]',
      '  target      web on edge-1 (http://h:7701)',
      '  deployment  d-1 — failed while VALIDATING, now ROLLED_BACK',
      `  container   ${'a'.repeat(12)} exited with code 1`,
      '  health      30 probes (http); the last 10: HTTP 404 ×10',
      "  log         the container's last 2 lines:",
      '    booting',
      '    fatal: no config',
      `  restored    the previous container ${'b'.repeat(12)} runs again`,
      '  next: the container exited with code 1: its log lines above say why; fix that and push again',
    ]);
  });

  test('a container still running that failed its check points at the check; nothing to restore is said', () => {
    const lines = report({
      state: 'FAILED',
      failure: failure({ container: { id: 'c'.repeat(64), status: 'running', restarts: 0, logs: [] }, restored: { outcome: 'nothing' } }),
    });
    assert.ok(lines.includes('  log         the container wrote nothing'), lines.join('\n'));
    assert.ok(lines.includes('  restored    nothing: no earlier version of web was on this host, so none runs now'));
    assert.match(lines.at(-1) ?? '', /^ {2}next: the container runs but did not pass its health check \(last answer: HTTP 404\)/);
  });

  test('an error without a deployment is its message and advice alone', () => {
    assert.deepEqual(failureLines({ error: { code: 'FERRY_ERR_RECEIVER_UNREACHABLE', message: 'down' } }), [
      '✖ down [FERRY_ERR_RECEIVER_UNREACHABLE]',
      '  next: check the --to URL and that "ferry receiver" runs there',
    ]);
  });

  test('hostile text from a receiver stays inert: no control sequence, and a log line cannot forge another', () => {
    const lines = report({
      error: { code: 'FERRY_ERR_HEALTHCHECK_FAILED', message: `failed ${HOSTILE}` }, host: `edge\n✔ fake`,
      failure: failure({ container: { id: 'd'.repeat(64), status: HOSTILE, restarts: 0, logs: [`fake\n✔ web is running ${HOSTILE}`] } }),
    });
    for (const l of lines) assertPlain(l.replace(/\t/g, ''));
    assert.ok(!lines.some((l) => l.startsWith('✔')), lines.join('\n'));
  });
});
