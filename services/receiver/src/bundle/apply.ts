import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { TrustStore, loadOrCreateHostKey, signBytes } from '@ferry/auth';
import { blobPath, checkDeferred, describeBase, dockerArchiveSize, openBundle, type BundleService, type VerifiedBundle } from '@ferry/bundle';
import { ensureWritableDir, type Env } from '@ferry/config';
import { ContainerRunner, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, createEvent, type EventSink } from '@ferry/events';
import { digestOf } from '@ferry/integrity';
import { createLogger, type Logger } from '@ferry/log';
import { FerryError, parseManifest, type DeploymentResult, type Manifest } from '@ferry/protocol';
import { loadReceiverConfig, type ReceiverConfig } from '../config.ts';
import { lockDataDir } from '../data-dir-lock.ts';
import { CanaryControl } from '../deploy/canary.ts';
import { Deployer } from '../deploy/engine.ts';
import { Journal } from '../journal/journal.ts';
import { LayerInventory } from '../layers/index.ts';
import { partialOwner } from '../load/layered.ts';
import type { LoadDeps } from '../load/load.ts';
import { PolicyGate } from '../policy/index.ts';
import { startProxy } from '../proxy-keeper.ts';
import { ReleaseStore } from '../releases/store.ts';
import { PackageStore } from '../store/packages.ts';
import { authorizeBundle, type BundleAuthority } from './authorize.ts';
import { BundlePackage } from './package.ts';

export interface ApplyOptions {
  /** The bundle, or its parts in order (checked against their list by the caller). */
  paths: readonly string[];
  /** The receiver's settings (FERRY_*): its data directory, trust file, engine, policy, labels, NATS. */
  env: Env;
  logger?: Logger;
  /** Unix seconds, for the grant's validity. */
  now?: () => number;
  /** Each step as it happens, for the command's output. */
  onStep?: (step: ApplyStep) => void;
}

export type ApplyStep =
  | { kind: 'verified'; releaseId: string; services: number; blobs: number; bytes: number }
  | { kind: 'warning'; code: 'grant.grace'; message: string }
  | { kind: 'phase'; index: number; name: string; services: string[] }
  | { kind: 'service'; service: string; deploymentId: string; state: string; error?: { code: string; message: string } }
  | { kind: 'rollback'; service: string; state: string; error?: { code: string; message: string } };

export interface AppliedService {
  name: string;
  phase: number;
  deploymentId: string;
  imageId: string;
  /** COMPLETED, FAILED, ROLLED_BACK, or skipped when an earlier phase failed. */
  state: string;
  error?: { code: string; message: string };
  /** What rolling it back did after a later service failed. */
  rollback?: { state: string; error?: { code: string; message: string } };
}

export interface ApplyResult {
  releaseId: string;
  hostId: string;
  ok: boolean;
  licence: BundleAuthority['licence'];
  services: AppliedService[];
}

/**
 * `ferry bundle apply`: the receiver's own verification and deployment of a release carried in a
 * bundle, on this host, with no sender and no network. Everything is checked before anything
 * changes — the whole bundle (open.ts), the signer against the receiver's trust file and the
 * bundle's grant (authorize.ts), the layers a differential bundle leaves out, the policy and the
 * downgrade rule for every service — then the services are deployed phase after phase through the
 * receiver's deployment engine (load, proof of the image id, swap, health check, rollback), and a
 * failed phase rolls back, last first, what this apply had deployed. It uses the receiver's data
 * directory (journal, retained releases, outbox) under its lock: where a receiver runs on that
 * directory it fails at once with FERRY_ERR_DATA_DIR_LOCKED.
 */
export async function applyBundle(options: ApplyOptions): Promise<ApplyResult> {
  const config = loadReceiverConfig(options.env);
  const log = options.logger ?? createLogger({ level: config.logLevel, name: 'ferry-bundle-apply' });
  const now = options.now ?? (() => Math.floor(Date.now() / 1000));
  await ensureWritableDir(config.dataDir);
  // At once, before the bundle is read: a receiver running on this data directory refuses it.
  const lock = await lockDataDir(config.dataDir, 'ferry bundle apply');
  try {
    return await applyLocked(options, config, log, now);
  } finally {
    await lock.release();
  }
}

async function applyLocked(options: ApplyOptions, config: Readonly<ReceiverConfig>, log: Logger, now: () => number): Promise<ApplyResult> {
  // Layer blobs are hashed as their load reads them (preloadImages), not in a pass of their own.
  const bundle = await openBundle(options.paths, { deferLayers: true });
  try {
    const { document } = bundle;
    options.onStep?.({ kind: 'verified', releaseId: document.release.id, services: document.release.services.length, blobs: bundle.blobs.count, bytes: bundle.blobs.bytes });
    const trust = new TrustStore({ file: config.trustFile });
    const authority = authorizeBundle(trust, bundle, { id: config.hostId, labels: config.labels }, now());

    const docker = createDockerClient(config.dockerHost);
    const images = new ImageStore(docker);
    const layers = new LayerInventory(docker, { owner: partialOwner(config.dataDir) });
    await assertBaseHeld(bundle, layers);
    const manifests = new Map(document.release.services.map((service) => [service.name, manifestOf(bundle, service)]));

    const events = await eventSink(config, log);
    const proxy = config.proxy ? await startProxy(config.proxy, log) : undefined;
    try {
      const journal = await Journal.open(join(config.dataDir, 'journal'), log);
      const deployer = new Deployer({
        images, containers: new ContainerRunner(docker), events, hostId: config.hostId, logger: log, policy: config.policy,
        packages: await PackageStore.open(config.dataDir), journal,
        retainImages: config.retainImages, stabilityWindowMs: config.stabilityWindowMs, canaries: new CanaryControl(),
        releases: await ReleaseStore.open(join(config.dataDir, 'releases'), log), retainReleases: config.retainReleases,
        disk: { dir: config.dataDir, minFreeBytes: config.minFreeBytes }, layers,
        ...(proxy ? { proxy: proxy.proxy } : {}),
      });
      try {
        // What a killed receiver (or apply) left half-done is put right first, as at a receiver's start.
        await deployer.recover();
        const policy = new PolicyGate({ policy: config.policy, events, hostId: config.hostId, logger: log, newestSigned: (service) => journal.newestSigned(service) });
        for (const manifest of manifests.values()) policy.check(manifest);
        await deployer.assertDiskSpace(0);
        const packages = new Map(document.release.services.map((service) => {
          const manifest = manifests.get(service.name);
          if (!manifest) throw new FerryError('FERRY_ERR_INTERNAL', { message: `no manifest for ${service.name}` });
          return [service.name, new BundlePackage(bundle, service.image, manifest)];
        }));
        await preloadImages(bundle, [...packages.values()], { images, packages: await PackageStore.open(config.dataDir), logger: log, layers });
        graceWarnings(authority, manifests, events, config.hostId, log, options.onStep);
        return await deployPhases(bundle, deployer, manifests, packages, authority, config.hostId, options.onStep);
      } finally {
        deployer.close();
      }
    } finally {
      await proxy?.close().catch((err: unknown) => log.error({ err }, 'closing the proxy failed'));
      await events.close();
    }
  } finally {
    await bundle.close();
  }
}

/** The manifest a sender would have signed for the service: the receiver's deployment engine takes nothing else. */
function manifestOf(bundle: VerifiedBundle, service: BundleService): Manifest {
  const { document } = bundle;
  const config = bundle.configs.get(service.image.id) ?? Buffer.alloc(0);
  const omitted = service.image.layers.map((l) => l.diffId).filter((id, i, all) => bundle.omitted.has(id) && all.indexOf(id) === i);
  const parsed = parseManifest({
    schema: 'ferry.manifest/v1',
    deploymentId: randomUUID(),
    // The release's signed time: an older bundle than what runs is refused as a downgrade.
    createdAt: document.release.createdAt,
    image: { ref: service.image.ref, id: service.image.id, diffIds: service.image.layers.map((l) => l.diffId) },
    package: {
      format: 'docker-archive', compression: 'none', size: dockerArchiveSize(service.image, config),
      // The package is the image as the bundle holds it, addressed by its manifest's digest.
      digest: digestOf(Buffer.from(service.image.manifest)),
      ...(omitted.length > 0 ? { omittedLayers: omitted } : {}),
    },
    service: service.spec,
    release: { id: document.release.id, phase: service.phase, phases: document.release.phases.length },
  });
  if (!parsed.ok) throw new FerryError('FERRY_ERR_BAD_MANIFEST', { message: `The bundle's service ${service.name} is invalid: ${parsed.problems.join('; ')}`, details: { problems: parsed.problems } });
  return parsed.manifest;
}

/**
 * A differential bundle leaves out layers the bundle it was made against carried: each must be on
 * this engine (under every layer below it, as the engine keys layers by chain), else nothing is
 * done and the missing ones are named.
 */
async function assertBaseHeld(bundle: VerifiedBundle, layers: LayerInventory): Promise<void> {
  if (bundle.omitted.size === 0) return;
  const missing = new Set<string>();
  for (const service of bundle.document.release.services) {
    const diffIds = service.image.layers.map((l) => l.diffId);
    if (!diffIds.some((id) => bundle.omitted.has(id))) continue;
    const { present } = await layers.present(diffIds);
    diffIds.forEach((id, i) => { if (bundle.omitted.has(id) && i >= present.length) missing.add(id); });
  }
  if (missing.size > 0) {
    const base = bundle.document.base;
    throw new FerryError('FERRY_ERR_BUNDLE_BASE_MISSING', {
      message: `This host lacks ${missing.size} layer(s) the bundle leaves out (${[...missing].map((id) => id.slice(0, 19)).join(', ')}): the bundle was made over ${base ? describeBase(base) : '?'}; ${base && 'inventory' in base ? 'make one for this host\'s inventory' : 'apply that release\'s bundle first'}, or a full bundle`,
      details: { missing: [...missing], base: base ?? null },
    });
  }
}

/**
 * Every image loaded, and every blob of the bundle checked, before the first service changes: the
 * images one after another (each verifying its layer blobs' SHA-256 and diff ids as the load reads
 * them, leaving out layers the engine holds), while the blobs of layers the engine held from the
 * start, which no load reads, are hashed beside them. A blob that fails refuses the whole apply
 * before anything is deployed, and the images loaded here are removed again.
 */
async function preloadImages(bundle: VerifiedBundle, packages: BundlePackage[], deps: LoadDeps): Promise<void> {
  const held = new Set<string>();
  for (const service of bundle.document.release.services) {
    const diffIds = service.image.layers.map((l) => l.diffId);
    for (const id of deps.layers ? (await deps.layers.present(diffIds)).present : []) held.add(id);
  }
  const unread = bundle.document.release.services.flatMap((s) => s.image.layers).filter((l) => held.has(l.diffId)).map((l) => blobPath(l.digest));
  const hashing = checkDeferred(bundle, [...new Set(unread)]);
  hashing.catch(() => undefined);
  const added: string[] = [];
  try {
    try {
      for (const pkg of packages) if (await pkg.preload(deps)) added.push(pkg.manifest.image.id);
    } finally {
      await hashing.catch(() => undefined);
    }
    await hashing;
    // Whatever neither a load nor the hashing above read (an image the engine held whole).
    await checkDeferred(bundle);
  } catch (err) {
    // A refused bundle leaves the engine as it found it: the images loaded here go again.
    for (const id of added.reverse()) {
      await deps.images.remove(id, { force: false }).catch((cause: unknown) => deps.logger.warn({ err: cause, imageId: id }, 'could not remove an image of a refused bundle'));
    }
    throw err;
  }
}

function graceWarnings(authority: BundleAuthority, manifests: ReadonlyMap<string, Manifest>, events: EventSink, hostId: string, log: Logger, onStep: ApplyOptions['onStep']): void {
  if (authority.graceServices.size === 0) return;
  const { licence } = authority;
  for (const service of authority.graceServices) {
    const manifest = manifests.get(service);
    if (!manifest) continue;
    events.publish(createEvent('grant.grace', {
      source: `ferry://receiver/${hostId}`, host: hostId, service, deploymentId: manifest.deploymentId,
      data: { keyId: authority.keyId, grant: licence?.grantId ?? null, notAfter: licence?.notAfter ?? null, graceSeconds: licence?.graceSeconds ?? 0 },
    }));
  }
  const message = `the bundle's grant ${licence?.grantId ?? ''} ended at ${licence?.notAfter ?? '?'}; it is applied inside its grace period: renew it`;
  log.warn({ keyId: authority.keyId, grant: licence?.grantId, notAfter: licence?.notAfter }, 'bundle applied inside its grant\'s grace period');
  onStep?.({ kind: 'warning', code: 'grant.grace', message });
}

async function deployPhases(bundle: VerifiedBundle, deployer: Deployer, manifests: ReadonlyMap<string, Manifest>, packages: ReadonlyMap<string, BundlePackage>, authority: BundleAuthority, hostId: string, onStep: ApplyOptions['onStep']): Promise<ApplyResult> {
  const { document } = bundle;
  const byName = new Map(document.release.services.map((s) => [s.name, s]));
  const applied: AppliedService[] = document.release.services.map((s) => ({
    name: s.name, phase: s.phase, deploymentId: manifests.get(s.name)?.deploymentId ?? '', imageId: s.image.id, state: 'skipped',
  }));
  const record = (name: string): AppliedService | undefined => applied.find((a) => a.name === name);
  const deployed: string[] = [];
  let failed = false;
  for (const [index, phase] of document.release.phases.entries()) {
    onStep?.({ kind: 'phase', index, name: phase.name, services: phase.services });
    const outcomes = await Promise.all(phase.services.map(async (name) => {
      const service = byName.get(name);
      const manifest = manifests.get(name);
      const pkg = packages.get(name);
      if (!service || !manifest || !pkg) throw new FerryError('FERRY_ERR_INTERNAL', { message: `no service ${name}` });
      try {
        const result: DeploymentResult = await deployer.deploy(pkg);
        return { name, state: result.state, deploymentId: manifest.deploymentId };
      } catch (err) {
        const error = err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { cause: err });
        const state = typeof error.details?.state === 'string' ? error.details.state : 'FAILED';
        return { name, state, deploymentId: manifest.deploymentId, error: { code: error.code, message: error.message } };
      }
    }));
    for (const outcome of outcomes) {
      const entry = record(outcome.name);
      if (entry) {
        entry.state = outcome.state;
        if (outcome.error) entry.error = outcome.error;
      }
      onStep?.({ kind: 'service', service: outcome.name, deploymentId: outcome.deploymentId, state: outcome.state, ...(outcome.error ? { error: outcome.error } : {}) });
      if (outcome.error) failed = true;
      else deployed.push(outcome.name);
    }
    if (failed) break;
  }
  if (failed) {
    // The release as a whole: what this apply deployed goes back, last first.
    for (const name of [...deployed].reverse()) {
      const entry = record(name);
      try {
        const result = await deployer.rollback(name);
        if (entry) entry.rollback = { state: result.state };
        onStep?.({ kind: 'rollback', service: name, state: result.state });
      } catch (err) {
        const error = err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { cause: err });
        if (entry) entry.rollback = { state: 'FAILED', error: { code: error.code, message: error.message } };
        onStep?.({ kind: 'rollback', service: name, state: 'FAILED', error: { code: error.code, message: error.message } });
      }
    }
  }
  return { releaseId: document.release.id, hostId, ok: !failed, licence: authority.licence, services: applied };
}

async function eventSink(config: Readonly<ReceiverConfig>, log: Logger): Promise<EventSink> {
  if (!config.natsUrl) return new NullSink({ logger: log });
  // Signed with the host key, as the receiver's own events are: the registry believes them.
  const hostKey = await loadOrCreateHostKey(config.dataDir, config.hostId);
  return JetStreamPublisher.connect({
    url: config.natsUrl, logger: log, name: `ferry-bundle-apply-${config.hostId}`, outboxDir: join(config.dataDir, 'outbox'),
    signer: { keyId: hostKey.keyId, sign: (message) => signBytes(hostKey.privateKey, message) },
  });
}
