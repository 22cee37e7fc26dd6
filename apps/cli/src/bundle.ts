import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, resolve } from 'node:path';
import { promisify } from 'node:util';
import { GRANT_TYPE, TrustStore, loadCredentials, parseDocument, type SignedDocument } from '@ferry/auth';
import { INVENTORY_MAX_BYTES, bundleImages, checkedParts, createBundle, describeBase, inventoryBase, joinBundle, openBundle, parseInventory, partOf, splitBundle, type BaseLayers, type BundleLayer, type VerifiedBundle } from '@ferry/bundle';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { FerryError, parseMemory } from '@ferry/protocol';
import { DEFAULT_BACKOFF, DEFAULT_PARALLEL, loadDeploymentFile, loadSenderConfig, planRelease, pushMany, resolveTargets, serviceSpecOf } from '@ferry/sender';
import { parse, parseInteger } from './args.ts';
import { fetchCommand, storeCommand, storedCommand } from './bundle-store.ts';
import { fileProject } from './deploy.ts';
import { line, type Io } from './io.ts';

/** `ferry bundle create|verify|apply|split|join`: what each does and takes is its help text, in help.ts. */
export async function bundleCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'create': return createCommand(rest, io);
    case 'verify': return verifyCommand(rest, io);
    case 'apply': return applyCommand(rest, io);
    case 'split': return splitCommand(rest, io);
    case 'join': return joinCommand(rest, io);
    case 'push': return pushCommand(rest, io);
    case 'store': return storeCommand(rest, io);
    case 'stored': return storedCommand(rest, io);
    case 'fetch': return fetchCommand(rest, io);
    default:
      throw new FerryError('FERRY_ERR_USAGE', { message: `ferry bundle ${sub ?? ''}: create, verify, apply, push, split, join, store, stored or fetch (see "ferry help bundle")`.replace('  ', ' ') });
  }
}

async function createCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, {
    file: { type: 'string', short: 'f' }, out: { type: 'string', short: 'o' }, key: { type: 'string' }, 'key-id': { type: 'string' },
    grant: { type: 'string' }, since: { type: 'string' }, 'for-inventory': { type: 'string' }, level: { type: 'string' }, json: { type: 'boolean' },
  });
  if (values.since !== undefined && values['for-inventory'] !== undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry bundle create: --since or --for-inventory, not both' });
  if (values.out === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry bundle create: -o FILE names the bundle to write' });
  const keyId = values['key-id'] ?? io.env.FERRY_KEY_ID;
  if (keyId === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry bundle create: the bundle is signed: --key FILE with --key-id ID (or FERRY_KEY_ID with FERRY_KEY_FILE)' });
  const keyFile = values.key ?? io.env.FERRY_KEY_FILE;
  const credentials = loadCredentials({
    keyId, ...(keyFile === undefined ? { key: io.env.FERRY_KEY } : { keyFile }), ...(values.grant === undefined ? {} : { grantFile: values.grant }),
  });
  const grant: SignedDocument | undefined = values.grant === undefined ? undefined : parseDocument(readFileSync(values.grant, 'utf8'), GRANT_TYPE);
  const level = parseInteger('level', values.level, 1, 19);
  const file = values.file ?? 'ferry.yaml';
  const document = await loadDeploymentFile(file, io.env);
  const plan = planRelease(document, { project: fileProject(document, file) });
  const inventory = values['for-inventory'];
  const base = values.since !== undefined ? await baseOf(values.since) : inventory !== undefined ? inventoryBaseOf(inventory) : undefined;
  const docker = createDockerClient(io.env.DOCKER_HOST);
  const result = await createBundle({
    images: new ImageStore(docker), out: resolve(values.out), key: { keyId, privateKey: credentials.privateKey }, grant, base, level,
    git: await gitRevision(dirname(resolve(file))),
    release: {
      id: plan.id, createdAt: plan.createdAt, project: plan.project, phases: plan.phases,
      services: plan.services.map((s) => ({ name: s.name, phase: s.phase, dependsOn: s.dependsOn, image: s.entry.image, spec: serviceSpecOf(s.name, s.entry) })),
      ...(plan.rollout ? { rollout: plan.rollout } : {}),
    },
  });
  const { document: made } = result;
  if (values.json) {
    line(io.stdout, JSON.stringify({ path: result.path, bytes: result.bytes, releaseId: made.release.id, index: made.index.digest, layers: result.layers, services: made.release.services.map((s) => ({ name: s.name, image: s.image.ref, imageId: s.image.id })) }));
    return 0;
  }
  line(io.stdout, `bundle ${result.path} (${formatBytes(result.bytes)}), release ${made.release.id} of ${made.release.project}`);
  for (const service of made.release.services) line(io.stdout, `  ${service.name}  ${service.image.ref}  ${service.image.id.slice(0, 19)}  phase ${service.phase + 1}`);
  line(io.stdout, `layers: ${result.layers.stored} stored once${result.layers.shared > 0 ? `, ${result.layers.shared} more uses shared` : ''}${result.layers.fromBase > 0 && made.base ? `, ${result.layers.fromBase} left to the base (${describeBase(made.base)})` : ''}`);
  line(io.stdout, `signed by ${made.provenance.keyId} (${made.provenance.fingerprint})${made.grant ? ', with its grant' : ''}`);
  return 0;
}

async function verifyCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { trust: { type: 'string' }, json: { type: 'boolean' } }, 1);
  const bundle = await open(positionals[0]);
  try {
    let licence: { grantId: string; notAfter: string | null; inGrace: boolean } | undefined;
    if (values.trust !== undefined) {
      const { trustedSigner } = await import('@ferry/receiver');
      licence = trustedSigner(new TrustStore({ file: values.trust }), bundle, Math.floor(Date.now() / 1000)).licence;
    }
    const { document } = bundle;
    if (values.json) {
      line(io.stdout, JSON.stringify({
        ok: true, releaseId: document.release.id, project: document.release.project, createdAt: document.release.createdAt, provenance: document.provenance,
        trusted: values.trust !== undefined, ...(licence ? { licence } : {}), ...(document.base ? { base: document.base } : {}),
        blobs: bundle.blobs, services: document.release.services.map((s) => ({ name: s.name, phase: s.phase, image: s.image.ref, imageId: s.image.id, manifest: s.image.manifest })),
      }));
      return 0;
    }
    const { provenance } = document;
    line(io.stdout, `release ${document.release.id} of ${document.release.project}, made ${document.release.createdAt}`);
    line(io.stdout, `signature: good, key ${provenance.keyId} (${provenance.fingerprint})${values.trust !== undefined ? `, trusted by ${values.trust}` : ' (not checked against a trust file: --trust FILE)'}`);
    if (licence) line(io.stdout, `licence: grant ${licence.grantId}, ${licence.notAfter === null ? 'no end' : `until ${licence.notAfter}`}${licence.inGrace ? ' — EXPIRED, inside its grace period: renew it' : ''}`);
    line(io.stdout, `made by ferry ${provenance.ferryVersion}${provenance.git ? ` from ${provenance.git.revision.slice(0, 12)}${provenance.git.dirty ? ' (with uncommitted changes)' : ''}` : ''}`);
    line(io.stdout, `blobs: ${bundle.blobs.count}, ${formatBytes(bundle.blobs.bytes)}, every SHA-256 checked${document.base ? `; differential over ${describeBase(document.base)} (${document.base.layers.length} layer(s) left out)` : ''}`);
    for (const [i, phase] of document.release.phases.entries()) {
      line(io.stdout, `phase ${i + 1} ${phase.name}:`);
      for (const name of phase.services) {
        const service = document.release.services.find((s) => s.name === name);
        if (service) line(io.stdout, `  ${service.name}  ${service.image.ref}  ${service.image.id.slice(0, 19)}  ${service.image.layers.length} layer(s)`);
      }
    }
    return 0;
  } finally {
    await bundle.close();
  }
}

async function applyCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } }, 1);
  const paths = await pathsOf(positionals[0]);
  const { applyBundle } = await import('@ferry/receiver');
  const { createLogger } = await import('@ferry/log');
  // The receiver's own log lines go to stderr as JSON; stdout says what happened.
  const logger = createLogger({ level: io.env.FERRY_LOG_LEVEL ?? 'warn', name: 'ferry-bundle-apply', destination: io.stderr });
  const result = await applyBundle({
    paths, env: io.env, logger,
    onStep: values.json ? undefined : (step) => {
      switch (step.kind) {
        case 'verified': line(io.stdout, `verified release ${step.releaseId}: ${step.services} service(s), ${step.blobs} blobs (${formatBytes(step.bytes)})`); break;
        case 'warning': line(io.stderr, `warning (${step.code}): ${step.message}`); break;
        case 'phase': line(io.stdout, `phase ${step.index + 1} ${step.name}: ${step.services.join(', ')}`); break;
        case 'service': line(io.stdout, `  ${step.service}  ${step.state}  ${step.deploymentId}${step.error ? `  ${step.error.code}: ${step.error.message}` : ''}`); break;
        case 'rollback': line(io.stdout, `  rolled back ${step.service}: ${step.state}${step.error ? `  ${step.error.code}: ${step.error.message}` : ''}`); break;
      }
    },
  });
  if (values.json) line(io.stdout, JSON.stringify(result));
  else line(io.stdout, result.ok ? `release ${result.releaseId} applied on ${result.hostId}` : `release ${result.releaseId} failed on ${result.hostId}; what it had deployed was rolled back`);
  return result.ok ? 0 : 1;
}

/**
 * `ferry bundle push FILE --to URL`: the bundle's images sent to receivers through the sender's own
 * delivery (streamed or spooled, layers the targets hold left out, retries), phase after phase,
 * each image read from the bundle rather than a build engine. The receivers check the pusher's key
 * and grant, as for `ferry deploy`; the bundle's own signature is checked here first.
 */
async function pushCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    to: { type: 'string', multiple: true }, parallel: { type: 'string' }, retries: { type: 'string' }, json: { type: 'boolean' },
  }, 1);
  if (!values.to || values.to.length === 0) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry bundle push FILE --to URL [--to URL …]' });
  const config = loadSenderConfig(io.env);
  const bundle = await open(positionals[0]);
  if (bundle.document.base) {
    await bundle.close();
    // A layer a differential bundle leaves out is not there to send: refused before anything is.
    throw new FerryError('FERRY_ERR_BUNDLE_BASE_MISSING', {
      message: `The bundle is differential over ${describeBase(bundle.document.base)} and lacks ${bundle.document.base.layers.length} layer(s) to send: push a full bundle`,
      details: { missing: bundle.document.base.layers, base: bundle.document.base },
    });
  }
  const { JetStreamPublisher, NullSink } = await import('@ferry/events');
  const { createLogger } = await import('@ferry/log');
  const logger = createLogger({ level: 'warn', name: 'ferry', destination: io.stderr });
  const events = config.natsUrl ? await JetStreamPublisher.connect({ url: config.natsUrl, logger, name: 'ferry-sender' }) : new NullSink({ logger });
  try {
    const targets = await resolveTargets(values.to, { registryUrl: config.registryUrl, credentials: config.credentials });
    const { document } = bundle;
    const deps = { images: bundleImages(bundle), events, credentials: config.credentials, source: `ferry://sender/${hostname()}` };
    const attempts = parseInteger('retries', values.retries, 1, 100) ?? DEFAULT_BACKOFF.attempts;
    const outcomes: Array<{ service: string; ok: boolean; targets: Array<{ url: string; host?: string; state: string; error?: { code: string; message: string } }> }> = [];
    for (const [phase, { name, services }] of document.release.phases.entries()) {
      if (!values.json) line(io.stdout, `phase ${phase + 1} ${name}: ${services.join(', ')}`);
      const results = await Promise.all(services.map(async (serviceName) => {
        const service = document.release.services.find((s) => s.name === serviceName);
        if (!service) throw new FerryError('FERRY_ERR_INTERNAL', { message: `no service ${serviceName}` });
        const result = await pushMany({
          image: service.image.ref, targets, service: service.spec, compression: 'auto',
          release: { id: document.release.id, phase, phases: document.release.phases.length },
          parallel: parseInteger('parallel', values.parallel, 1, 100) ?? DEFAULT_PARALLEL, policy: { ...DEFAULT_BACKOFF, attempts },
        }, deps);
        return {
          service: serviceName, ok: result.ok,
          targets: result.targets.map((t) => ({ url: t.url, ...(t.host ? { host: t.host } : {}), state: t.state, ...(t.error ? { error: { code: t.error.code, message: t.error.message } } : {}) })),
        };
      }));
      for (const result of results) {
        outcomes.push(result);
        if (values.json) continue;
        for (const t of result.targets) line(io.stdout, `  ${result.service}  ${t.host ?? t.url}  ${t.state}${t.error ? `  ${t.error.code}: ${t.error.message}` : ''}`);
      }
      if (results.some((r) => !r.ok)) break;
    }
    const ok = outcomes.length === document.release.services.length && outcomes.every((o) => o.ok);
    if (values.json) line(io.stdout, JSON.stringify({ ok, releaseId: document.release.id, services: outcomes }));
    else line(io.stdout, ok ? `release ${document.release.id} pushed to ${targets.length} target(s)` : `release ${document.release.id} failed; later phases were not pushed`);
    return ok ? 0 : 1;
  } finally {
    await events.close();
    await bundle.close();
  }
}

async function splitCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { size: { type: 'string' } }, 1);
  const path = positionals[0];
  if (path === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry bundle split FILE --size 100m' });
  const size = values.size === undefined ? 1024 ** 3 : parseMemory(values.size);
  if (size === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: '--size: bytes, or a number with k, m or g (100m, 4g)' });
  const { list, listPath } = await splitBundle(path, size);
  for (const part of list.parts) line(io.stdout, `${part.name}  ${formatBytes(part.size)}  ${part.digest}`);
  line(io.stdout, `${list.parts.length} part(s) and ${listPath}: copy them all; "ferry bundle join", verify and apply take the first part`);
  return 0;
}

async function joinCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { out: { type: 'string', short: 'o' } }, 1);
  const path = positionals[0];
  if (path === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry bundle join FILE.part-000 [-o FILE]' });
  const joined = await joinBundle(path, values.out === undefined ? undefined : resolve(values.out));
  line(io.stdout, `${joined.path} (${formatBytes(joined.size)}): every part and the whole checked`);
  return 0;
}

/** A bundle, or the first part of a split one (each part then checked against its list). */
async function pathsOf(path: string | undefined): Promise<string[]> {
  if (path === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'name the bundle file (or its first part)' });
  return partOf(path) === undefined ? [path] : (await checkedParts(path)).paths;
}

async function open(path: string | undefined): Promise<VerifiedBundle> {
  return openBundle(await pathsOf(path));
}

/** `--since previous.ferry`: the layers it carries, which the new bundle then leaves out. */
async function baseOf(path: string): Promise<BaseLayers> {
  const previous = await open(path);
  try {
    const layers = new Map<string, BundleLayer>();
    for (const service of previous.document.release.services) {
      for (const layer of service.image.layers) if (!previous.omitted.has(layer.diffId)) layers.set(layer.diffId, layer);
    }
    return { from: { releaseId: previous.document.release.id, index: previous.document.index.digest }, layers };
  } finally {
    await previous.close();
  }
}

/** `--for-inventory host.json`: the layers the host holds (ferry inventory), which the new bundle leaves out. */
function inventoryBaseOf(path: string): BaseLayers {
  let bytes: Buffer;
  try {
    // Its size first: a file far larger than any inventory is refused before it is read into memory.
    if (statSync(path).size > INVENTORY_MAX_BYTES) throw new FerryError('FERRY_ERR_BAD_INVENTORY', { message: `${path} is larger than an inventory may be (${INVENTORY_MAX_BYTES} bytes)` });
    bytes = readFileSync(path);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('FERRY_ERR_BAD_INVENTORY', { message: `${path} cannot be read: ${(err as Error).message}` });
  }
  const { inventory, digest } = parseInventory(bytes, path);
  return inventoryBase(inventory, digest);
}

/** The checkout's revision, when the file is in one, and whether it has uncommitted changes. */
async function gitRevision(dir: string): Promise<{ revision: string; dirty: boolean } | undefined> {
  const run = promisify(execFile);
  try {
    const revision = (await run('git', ['rev-parse', 'HEAD'], { cwd: dir })).stdout.trim();
    const status = (await run('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: dir, maxBuffer: 16 * 1024 * 1024 })).stdout;
    return /^[0-9a-f]{40,64}$/.test(revision) ? { revision, dirty: status.trim() !== '' } : undefined;
  } catch {
    return undefined;
  }
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(1)} ${units[unit]}`;
}
