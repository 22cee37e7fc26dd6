import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '@ferry/log';
import { startRegistry, type HistoryEntry, type RunningRegistry } from '@ferry/registry';
import { testKey, trustFile } from '../helpers/keys.ts';
import { enrolledHost, hostRegistration as registration, signedCall, until, type Answer, type Signer } from '../helpers/registry.ts';
import { NatsServer } from '../helpers/servers.ts';

const SUITE = { timeout: 120_000 };
const RUN = randomBytes(3).toString('hex');
const ID = `registry-${RUN}`;
const admin = { ...testKey(`reg-nats-${RUN}`), audience: ID };

async function call(base: string, method: string, path: string, body?: unknown, signer: Signer = admin): Promise<Answer> {
  return signedCall(base, signer, method, path, body);
}

describe('registry with NATS away', SUITE, () => {
  let nats: NatsServer;
  let dataDir: string;
  let registry: RunningRegistry;

  before(async () => {
    // A private nats-server (file store in its own directory): this test stops and restarts it.
    nats = await NatsServer.create();
    await nats.start();
    dataDir = mkdtempSync(join(tmpdir(), 'fx-registry-nats-'));
    registry = await startRegistry({
      FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }]), FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: ID, FERRY_NATS_URL: nats.url,
      FERRY_DATA_DIR: dataDir, FERRY_HOST_TTL_SECONDS: '60', FERRY_LOG_LEVEL: 'error',
    }, { logger: createLogger({ level: 'silent' }) });
  });

  after(async () => {
    await registry?.close();
    await nats?.dispose();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const hostHistory = async (): Promise<HistoryEntry[]> => (await call(registry.url, 'GET', '/v1/services/_host/history')).body.history as HistoryEntry[];
  const readyz = async (): Promise<string> => ((await (await fetch(`${registry.url}/readyz`)).json()) as { status: string }).status;

  it('keeps serving while NATS is down; its own events wait in the outbox and the projection catches up when NATS returns', async () => {
    const a = `a-${RUN}`;
    const b = `b-${RUN}`;
    const aKey = await enrolledHost(registry.url, admin, a);
    await until(async () => ((await hostHistory()).some((h) => h.host === a) ? true : undefined));
    const bKey = await enrolledHost(registry.url, admin, b);

    await nats.stop();
    await until(async () => ((await readyz()) === 'degraded' ? true : undefined));
    assert.equal((await call(registry.url, 'POST', '/v1/hosts', registration(b), bKey)).status, 200);
    assert.equal((await call(registry.url, 'POST', `/v1/hosts/${a}/heartbeat`, {}, aKey)).status, 200);
    const refused = await call(registry.url, 'POST', '/v1/projection/rebuild');
    assert.equal((refused.body.error as { code: string }).code, 'FERRY_ERR_EVENTS_UNAVAILABLE');

    await nats.start();
    const history = await until(async () => {
      const entries = await hostHistory();
      return entries.filter((h) => h.host === b && h.type === 'host.registered').length >= 2 ? entries : undefined;
    });
    // Its enrollment and the registration while NATS was away: both told, once each.
    assert.equal(history.filter((h) => h.host === b).length, 2);
    await until(async () => ((await readyz()) === 'ready' ? true : undefined));
  });
});
