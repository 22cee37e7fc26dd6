import { Router, type Request, type Response } from 'express';
import { z } from 'zod';
import { authorize, type Action } from '@ferry/auth';
import { continueIfExpected, parseJson, readBody, readSignedJson, type AuthLocals } from '@ferry/http';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS, LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_LABELS, RELEASE_ID_PATTERN, SERVICE_NAME_PATTERN, parseSelector } from '@ferry/protocol';
import type { EventProjector } from './consumer.ts';
import { MAX_TOKEN_TTL_SECONDS, type EnrollmentProof } from './enrollment.ts';
import { HOST_SERVICE } from './projection.ts';
import { DEFAULT_QUALITY_WINDOW, MAX_QUALITY_WINDOW } from './quality.ts';
import { ENV_DIGEST_PATTERN, type Registry } from './registry.ts';

/** Registry request bodies are small JSON documents; a desired state with its service spec fits easily. */
const MAX_BODY_BYTES = 256 * 1024;
/** An enrollment is read before its signature is checked: it gets less room than a signed body. */
const MAX_ENROLL_BYTES = 16 * 1024;

const ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const idSchema = z.string().regex(ID, 'letters, digits, "-" and "_", at most 63, not starting with "-" or "_"');
const urlSchema = z.url({ protocol: /^https?$/, error: 'an http(s) URL' });
/** Labels are matched by grants' host selectors and senders' target selectors (docs/protocol.md §2.3): bounded, and plain names only. */
const labelsSchema = z.unknown()
  // JSON.parse makes "__proto__" an own key, which a record would drop without a word: refused instead.
  .refine((value) => typeof value !== 'object' || value === null || !Object.hasOwn(value, '__proto__'), 'a label key: "__proto__" is not a name')
  .pipe(z.record(
    z.string().regex(LABEL_KEY_PATTERN, 'a label key: at most 63 letters, digits, ".", "_", "/" and "-", starting with a letter or digit'),
    z.string().regex(LABEL_VALUE_PATTERN, 'a label value: at most 256 characters, no control characters or commas, not starting with "="'),
  ))
  .refine((labels) => Object.keys(labels).length <= MAX_LABELS, `at most ${MAX_LABELS} labels`);

const HostSchema = z.object({
  id: idSchema,
  url: urlSchema,
  labels: labelsSchema.default({}),
  capabilities: z.array(z.string().max(64)).max(64).default([]),
  version: z.string().max(64),
  engine: z.object({ version: z.string().max(64), storageDriver: z.string().max(64), imageStore: z.enum(['legacy', 'containerd']) }),
});

const ReportSchema = z.object({
  service: z.string().regex(SERVICE_NAME_PATTERN, 'a service name'),
  containerId: z.string().max(128).optional(),
  imageId: z.string().max(128).optional(),
  image: z.string().max(512).optional(),
  configHash: z.string().max(128).optional(),
  deploymentId: z.string().max(128).optional(),
  state: z.string().min(1).max(32),
  restarts: z.number().int().min(0).max(1e9).optional(),
});

const HeartbeatSchema = z.object({ services: z.array(ReportSchema).max(1000).optional() });

/** `service.env` holds a digest per variable (@ferry/auth envDigests); a value is refused, and never echoed. */
const serviceSchema = z.record(z.string(), z.unknown()).superRefine((service, ctx) => {
  const env = service.env;
  if (env === undefined) return;
  if (typeof env !== 'object' || env === null || Array.isArray(env)) {
    ctx.addIssue({ code: 'custom', path: ['env'], message: 'an object of variable names to digests' });
    return;
  }
  const entries = Object.entries(env);
  if (entries.length > 1000) ctx.addIssue({ code: 'custom', path: ['env'], message: 'at most 1000 variables' });
  const values = entries.filter(([, value]) => typeof value !== 'string' || !ENV_DIGEST_PATTERN.test(value)).map(([name]) => name);
  if (values.length > 0) {
    ctx.addIssue({
      code: 'custom', path: ['env'],
      message: `${values.slice(0, 5).join(', ')}${values.length > 5 ? ', …' : ''}: the registry takes a digest of each value (hmac-sha256:<64 hex>), never the value`,
    });
  }
});

const DesiredSchema = z.object({
  deploymentId: z.string().min(1).max(128),
  image: z.string().min(1).max(512),
  imageId: z.string().min(1).max(128),
  configHash: z.string().min(1).max(128),
  service: serviceSchema,
  targetUrl: urlSchema,
});

const JoinTokenSchema = z.strictObject({
  host: idSchema,
  labels: labelsSchema.optional(),
  ttlSeconds: z.int().min(60, 'at least 60').max(MAX_TOKEN_TTL_SECONDS, `at most ${MAX_TOKEN_TTL_SECONDS}`).optional(),
  replace: z.boolean().optional(),
});

const EnrollSchema = z.strictObject({
  token: z.string().regex(/^[A-Za-z0-9_-]{22,256}$/, 'a join token'),
  publicKey: z.string().regex(/^[A-Za-z0-9+/]{43}=?$/, 'base64 of the raw 32-byte Ed25519 public key'),
  registration: HostSchema,
});

/**
 * What each signed route asks of the key's role, checked before the body is read; routes check
 * the host and service a request names once they know them. A host key only registers and
 * heartbeats (as itself); writing desired state takes a deploy grant for that service and host;
 * join tokens and a rebuild take an admin key; everything else reads.
 */
export function registryAction(req: { method: string; path: string }): Action {
  const path = req.path.startsWith('/v1/') ? req.path.slice(3) : req.path;
  if (req.method === 'GET' || req.method === 'HEAD') return 'read';
  if (req.method === 'POST' && (path === '/hosts' || /^\/hosts\/[^/]+\/heartbeat$/.test(path))) return 'host';
  if (req.method === 'POST' && (path === '/join-tokens' || path === '/projection/rebuild')) return 'admin';
  return 'deploy';
}

export interface RegistryRouteDeps {
  registry: Registry;
  /** Absent when no NATS is configured: no history comes in and a rebuild is refused. */
  projector?: EventProjector;
}

/**
 * `POST /v1/enroll`, mounted before the signature check: the request presents the key that signs
 * it. Its join token is looked at before anything else is spent on it (an enrollment without a
 * live token for that host costs no signature check and leaves no nonce), then the signature is
 * checked against the presented key, and only then is the token used up.
 */
export function enrollRouter(deps: { registry: Registry; proof: EnrollmentProof }): Router {
  const { registry } = deps;
  const router = Router();
  router.post('/v1/enroll', async (req, res) => {
    continueIfExpected(req, res);
    const raw = await readBody(req, MAX_ENROLL_BYTES, 'The enrollment');
    const body = parse(EnrollSchema, parseJson(req, raw));
    const host = body.registration.id;
    registry.checkJoinToken(body.token, host);
    const verified = await deps.proof.verify({ method: req.method, path: req.originalUrl, headers: req.headers }, host, body.publicKey);
    if (digestOf(raw) !== verified.contentDigest) {
      throw new FerryError('FERRY_ERR_BODY_DIGEST_MISMATCH', { message: `${HEADERS.contentDigest} is not the BLAKE3 of the body` });
    }
    const { host: record } = registry.enroll(body.token, body.publicKey, body.registration);
    res.json({ host: record, heartbeatSeconds: registry.heartbeatSeconds, ttlSeconds: registry.ttlSeconds });
  });
  return router;
}

/** The signed `/v1` API of docs/registry.md; handlers parse, check the grant, and answer; the Registry decides. */
export function registryRouter(deps: RegistryRouteDeps): Router {
  const { registry } = deps;
  const router = Router();

  router.post('/v1/join-tokens', async (req, res) => {
    const body = parse(JoinTokenSchema, await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES }));
    res.status(201).json(registry.issueJoinToken(body, auth(res).keyId));
  });

  router.post('/v1/hosts', async (req, res) => {
    const body = parse(HostSchema, await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'object' }));
    // A host key writes its own record only.
    authorize(auth(res), 'host', { host: { id: body.id, labels: {} } });
    const host = registry.register(body);
    res.json({ host, heartbeatSeconds: registry.heartbeatSeconds, ttlSeconds: registry.ttlSeconds });
  });

  router.post('/v1/hosts/:id/heartbeat', async (req, res) => {
    const id = param(req, 'id');
    authorize(auth(res), 'host', { host: { id, labels: {} } });
    const body = parse(HeartbeatSchema, await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'object' }));
    registry.heartbeat(id, body.services);
    res.json({ ok: true });
  });

  router.get('/v1/hosts', (req, res) => {
    const selector = query(req, 'selector');
    const status = query(req, 'status');
    if (status !== undefined && status !== 'online' && status !== 'lost') throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'status: online or lost' });
    res.json({ hosts: registry.hosts({ ...(selector === undefined ? {} : { selector: parseSelector(selector) }), ...(status === undefined ? {} : { status }) }) });
  });

  router.put('/v1/desired/:host/:service', async (req, res) => {
    const host = param(req, 'host');
    const service = param(req, 'service');
    if (!ID.test(host)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'host: letters, digits, "-" and "_"' });
    if (!SERVICE_NAME_PATTERN.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'service: a service name' });
    // Before the body: a key that may not deploy this service there learns nothing more.
    authorize(auth(res), 'deploy', { service, host: registry.hostFacts(host) });
    const body = parse(DesiredSchema, await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'object' }));
    res.json({ service: registry.putDesired(host, service, body, auth(res).keyId) });
  });

  router.get('/v1/services', (req, res) => {
    const host = query(req, 'host');
    const service = query(req, 'service');
    res.json({ services: registry.services({ ...(host === undefined ? {} : { host }), ...(service === undefined ? {} : { service }) }) });
  });

  router.get('/v1/drift', (_req, res) => {
    res.json({ drift: registry.drifted() });
  });

  router.get('/v1/services/:service/history', (req, res) => {
    const service = param(req, 'service');
    if (service !== HOST_SERVICE && !SERVICE_NAME_PATTERN.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'service: a service name' });
    res.json({ history: registry.history(service) });
  });

  router.get('/v1/deployments', (req, res) => {
    const raw = query(req, 'limit');
    const limit = raw === undefined ? 50 : Number(raw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'limit: a whole number from 1 to 1000' });
    res.json({ deployments: registry.deployments(limit) });
  });

  router.get('/v1/releases', (req, res) => {
    const limit = wholeNumber(query(req, 'limit'), 'limit', 50, 200);
    const before = query(req, 'before');
    if (before !== undefined && !RELEASE_ID_PATTERN.test(before)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'before: a release id (rel-YYYYMMDDTHHMMSSZ-<8 hex>)' });
    const project = query(req, 'project');
    if (project !== undefined && project.length > 128) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'project: at most 128 characters' });
    res.json(registry.releases({ limit, ...(before === undefined ? {} : { before }), ...(project === undefined ? {} : { project }) }));
  });

  router.get('/v1/releases/:id', (req, res) => {
    const id = param(req, 'id');
    if (!RELEASE_ID_PATTERN.test(id)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'id: a release id (rel-YYYYMMDDTHHMMSSZ-<8 hex>)' });
    const release = registry.release(id);
    if (!release) throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `The registry knows no release ${id}`, details: { release: id } });
    res.json({ release });
  });

  router.get('/v1/quality', (req, res) => {
    const window = wholeNumber(query(req, 'last'), 'last', DEFAULT_QUALITY_WINDOW, MAX_QUALITY_WINDOW);
    const service = query(req, 'service');
    if (service !== undefined && !SERVICE_NAME_PATTERN.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'service: a service name' });
    res.json({ last: window, quality: registry.quality({ window, ...(service === undefined ? {} : { service }) }) });
  });

  router.post('/v1/projection/rebuild', async (req, res) => {
    await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'only' });
    if (!deps.projector) throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: 'The registry has no event stream configured (FERRY_NATS_URL)' });
    res.json({ events: await deps.projector.rebuild() });
  });
  return router;
}

function auth(res: Response): AuthLocals['auth'] {
  return (res.locals as AuthLocals).auth;
}

function param(req: Request, name: string): string {
  const value = req.params[name];
  if (typeof value !== 'string') throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${name} is missing` });
  return value;
}

function query(req: Request, name: string): string | undefined {
  const value = req.query[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${name} is given more than once` });
  return value;
}

/** A query parameter as a whole number from 1 to `max`, `fallback` when absent. */
function wholeNumber(raw: string | undefined, name: string, fallback: number, max: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!/^\d{1,7}$/.test(raw) || !Number.isInteger(value) || value < 1 || value > max) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${name}: a whole number from 1 to ${max}` });
  }
  return value;
}

function parse<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`);
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Invalid request body: ${problems.join('; ')}`, details: { problems } });
  }
  return result.data;
}
