/**
 * Text from receivers, the registry and containers reaches the terminal inert: escape sequences
 * and other control characters are removed (C1 controls and bidirectional overrides spelled
 * `\uXXXX`), single-line fields stay on one line, and JSON output keeps its values.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import { FerryError } from '@ferry/protocol';
import type { Io } from '../../apps/cli/src/io.ts';
import { line } from '../../apps/cli/src/io.ts';
import { createProgress } from '../../apps/cli/src/progress.ts';
import { table } from '../../apps/cli/src/registry.ts';
import { report } from '../../apps/cli/src/report.ts';
import { oneLine, printable } from '../../apps/cli/src/terminal.ts';

/** A hostile string: colours, a screen clear, a window title, a hyperlink, a bell, CR overwrite, C1 CSI, a bidi override. */
const HOSTILE = '\x1b[31mred\x1b[0m \x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\ bell\x07 ok\rFAKE \x9b31m \u202eevil';

/** Control characters other than tab and line feed, and what must never be printed raw. */
const RAW_CONTROL = /[\p{Cc}\u202a-\u202e\u2066-\u2069]/u;
function assertInert(text: string, label: string): void {
  assert.ok(!RAW_CONTROL.test(text.replace(/[\t\n]/g, '')), `${label}: ${JSON.stringify(text)}`);
}

function capture(isTTY = false): PassThrough & { isTTY?: boolean; text: () => string } {
  const out = new PassThrough() as PassThrough & { isTTY?: boolean; text: () => string };
  let text = '';
  out.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
  out.isTTY = isTTY;
  out.text = () => text;
  return out;
}

describe('printable / oneLine', () => {
  test('escape sequences go whole, C0 controls go, line feeds and tabs stay', () => {
    assert.equal(printable('\x1b[1;31mred\x1b[0m plain'), 'red plain');
    assert.equal(printable('\x1b]0;title\x07after'), 'after');
    assert.equal(printable('\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\'), 'link');
    assert.equal(printable('\x1bPq#0;2;0;0;0\x1b\\sixel gone'), 'sixel gone');
    assert.equal(printable('a\x1bcb'), 'ab', 'ESC c (reset) with its letter');
    assert.equal(printable('unterminated\x1b[12'), 'unterminated');
    assert.equal(printable('one\r\ntwo\rTWO\tx\x00\x08\x07'), 'one\ntwoTWO\tx');
    assert.equal(printable('plain ✔ é 日本 🚢'), 'plain ✔ é 日本 🚢', 'printable text is left alone');
  });

  test('DEL, C1 controls and bidi overrides are spelled \\uXXXX', () => {
    assert.equal(printable('a\x9b31mb\x7fc\u202ed'), 'a\\u009b31mb\\u007fc\\u202ed');
  });

  test('a JSON text keeps its value', () => {
    const value = { message: HOSTILE, logs: ['x\x85y', 'tab\tnl\n'] };
    const shown = printable(JSON.stringify(value));
    assertInert(shown, 'json');
    assert.deepEqual(JSON.parse(shown), value);
  });

  test('oneLine puts line breaks and tabs on one line', () => {
    assert.equal(oneLine('web-1\n✔ web-2 is running\ttab\u2028x'), 'web-1 ✔ web-2 is running tab x');
    assertInert(oneLine(HOSTILE), 'oneLine');
  });
});

describe('what the CLI prints', () => {
  test('line() never writes a control sequence, and keeps line breaks', () => {
    const out = capture();
    line(out, `first\n${HOSTILE}`);
    assertInert(out.text(), 'line');
    assert.equal(out.text().split('\n').length, 3);
  });

  test('report(): a receiver\'s error message, probe error and container log lines', () => {
    const stderr = capture();
    const stdout = capture();
    const io: Io = { env: {}, stdout, stderr };
    const error = new FerryError('FERRY_ERR_HEALTHCHECK_FAILED', {
      message: `Health check failed ${HOSTILE}`,
      details: {
        deployment: {
          deploymentId: 'd-1', state: 'ROLLED_BACK',
          failure: {
            stage: 'VALIDATING',
            health: { type: 'http', attempts: 3, probes: [{ at: HOSTILE, ok: false, ms: 1, error: `ECONNREFUSED ${HOSTILE}` }] },
            container: { id: HOSTILE, status: HOSTILE, restarts: 0, logs: ['\x1b[32mINFO\x1b[0m started', `fake\n✔ web is running ${HOSTILE}`] },
          },
        },
      },
    });
    assert.equal(report(io, error, false), 1);
    const text = stderr.text();
    assertInert(text, 'report');
    assert.match(text, /\n {4}INFO started\n/);
    assert.ok(!/\n✔ web is running/.test(text), 'a log line cannot forge a line of its own');
  });

  test('report() under --json: the same values, inert on a terminal', () => {
    const stdout = capture();
    const io: Io = { env: {}, stdout, stderr: capture() };
    report(io, new FerryError('FERRY_ERR_DOCKER', { message: HOSTILE }), true);
    assertInert(stdout.text(), 'json report');
    assert.equal((JSON.parse(stdout.text()) as { error: { message: string } }).error.message, HOSTILE);
  });

  test('tables (hosts, labels, drift): one line per row', () => {
    const text = table([['ID', 'LABELS'], [`web-1\n✔ fake-host\x1b[2K`, `env=prod,${HOSTILE}`]]);
    assertInert(text, 'table');
    assert.equal(text.split('\n').length, 2);
  });

  test('progress: targets, retry reasons and states from receivers, plain and on a terminal', () => {
    for (const tty of [false, true]) {
      const out = capture(tty);
      const progress = createProgress(out, { json: false, targets: ['http://a:7701'] });
      progress.stage('transfer', { bytes: 100 });
      progress.sent('http://a:7701', 50);
      progress.retrying('http://a:7701', 1, 1000, `reset\n${HOSTILE}`);
      progress.done(`http://a:7701${HOSTILE}`, false, `FAILED ${HOSTILE}`);
      progress.close();
      // The bars' own cursor movements are the only escape sequences on a terminal.
      const parts = out.text().split('\u001b');
      for (const part of parts.slice(1)) assert.match(part, /^\[\d*[AJK]/, 'an escape sequence the bars did not write');
      const text = parts.map((part, i) => (i === 0 ? part : part.replace(/^\[\d*[AJK]/, ''))).join('').replace(/\r/g, '');
      assertInert(text, `progress (tty: ${tty})`);
      assert.ok(!text.includes('pwned'), 'an OSC title is dropped with its payload');
    }
  });
});
