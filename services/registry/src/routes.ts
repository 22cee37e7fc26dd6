import { Router, type Request } from 'express';
import { z } from 'zod';
import { readSignedJson } from '@ferry/http';
import { FerryError, SERVICE_NAME_PATTERN, parseSelector } from '@ferry/protocol';
import type { EventProjector } from './consumer.ts';
import type { Registry } from './registry.ts';

/** Registry request bodies are small JSON documents; a desired state with its service spec fits easily. */
const MAX_BODY_BYTES = 256 * 1024;

const ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const idSchema = z.string().regex(ID, 'letters, digits, "-" and "_", at most 63');
const urlSchema = z.url({ protocol: /^https?$/, error: 'an http(s) URL' });

const HostSchema = z.object({
  id: idSchema,
  url: urlSchema,
  labels: z.record(z.string().regex(/^[A-Za-z0-9_./-]{1,63}$/, 'a label key: letters, digits, ".", "_", "/" and "-"'), z.string().max(256)).default({}),
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
});

const HeartbeatSchema = z.object({ services: z.array(ReportSchema).max(1000).optional() });

const DesiredSchema = z.object({
  deploymentId: z.string().min(1).max(128),
  image: z.string().min(1).max(512),
  imageId: z.string().min(1).max(128),
  configHash: z.string().min(1).max(128),
  service: z.record(z.string(), z.unknown()),
  targetUrl: urlSchema,
});

export interface RegistryRouteDeps {
  registry: Registry;
  /** Absent when no NATS is configured: no history comes in and a rebuild is refused. */
  projector?: EventProjector;
}

/** The signed `/v1` API of docs/registry.md; handlers only parse and answer, the Registry decides. */
export function registryRouter(deps: RegistryRouteDeps): Router {
  const { registry } = deps;
  const router = Router();

  router.post('/v1/hosts', async (req, res) => {
    const body = parse(HostSchema, await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'object' }));
    const host = registry.register(body);
    res.json({ host, heartbeatSeconds: registry.heartbeatSeconds, ttlSeconds: registry.ttlSeconds });
  });

  router.post('/v1/hosts/:id/heartbeat', async (req, res) => {
    const body = parse(HeartbeatSchema, await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'object' }));
    registry.heartbeat(param(req, 'id'), body.services);
    res.json({ ok: true });
  });

  router.get('/v1/hosts', (req, res) => {
    const selector = query(req, 'selector');
    const status = query(req, 'status');
    if (status !== undefined && status !== 'online' && status !== 'lost') throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'status: online or lost' });
    res.json({ hosts: registry.hosts({ ...(selector === undefined ? {} : { selector: parseSelector(selector) }), ...(status === undefined ? {} : { status }) }) });
  });

  router.put('/v1/desired/:host/:service', async (req, res) => {
    const body = parse(DesiredSchema, await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'object' }));
    const host = param(req, 'host');
    const service = param(req, 'service');
    if (!ID.test(host)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'host: letters, digits, "-" and "_"' });
    if (!SERVICE_NAME_PATTERN.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'service: a service name' });
    res.json({ service: registry.putDesired(host, service, body) });
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
    res.json({ history: registry.history(param(req, 'service')) });
  });

  router.get('/v1/deployments', (req, res) => {
    const raw = query(req, 'limit');
    const limit = raw === undefined ? 50 : Number(raw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'limit: a whole number from 1 to 1000' });
    res.json({ deployments: registry.deployments(limit) });
  });

  router.post('/v1/projection/rebuild', async (req, res) => {
    await readSignedJson(req, res, { maxBytes: MAX_BODY_BYTES, empty: 'only' });
    if (!deps.projector) throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: 'The registry has no event stream configured (FERRY_NATS_URL)' });
    res.json({ events: await deps.projector.rebuild() });
  });
  return router;
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

function parse<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`);
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Invalid request body: ${problems.join('; ')}`, details: { problems } });
  }
  return result.data;
}

