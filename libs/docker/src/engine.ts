import { Agent, request as httpRequest, type IncomingMessage } from 'node:http';
import { addAbortSignal, pipeline, type Readable } from 'node:stream';

/** Where one engine listens: a unix socket on this machine, or a plain-HTTP TCP address. */
export type EngineAddress = { socketPath: string } | { host: string; port: number };

/** A query parameter as callers give it; see {@link encodeQuery} for how each kind is written. */
export type QueryValue = string | number | boolean | undefined | null | readonly string[] | Record<string, unknown>;
export type Query = Record<string, QueryValue>;

export interface EngineRequest {
  /** The API path, unversioned (`/images/json`): the engine then speaks its own newest version. */
  path: string;
  query?: Query;
  signal?: AbortSignal;
}

export interface JsonRequest extends EngineRequest {
  method?: 'GET' | 'POST' | 'DELETE';
  /** Sent as `application/json`. */
  body?: unknown;
}

export interface StreamRequest extends EngineRequest {
  method?: 'GET' | 'POST';
  /** Piped to the engine with backpressure (chunked), never buffered. */
  body?: Readable;
  /** Defaults to `application/x-tar`, what load and build take. */
  contentType?: string;
}

/**
 * A non-2xx answer from the engine. `json` is its parsed body (the engine says `{ message }`),
 * or the raw text when it was not JSON; `message` carries the status and the engine's words.
 */
export class EngineError extends Error {
  readonly statusCode: number;
  readonly json: unknown;

  constructor(statusCode: number, json: unknown, method: string, path: string) {
    super(`(HTTP code ${statusCode}) ${method} ${path}: ${wordsOf(json) || 'no message'}`);
    this.name = 'EngineError';
    this.statusCode = statusCode;
    this.json = json;
  }
}

// An error answer is a short JSON object; anything longer is not read into memory whole.
const MAX_ERROR_BODY = 64 * 1024;
// Lists of images or containers on a busy engine run to megabytes, never to this.
const MAX_JSON_BODY = 256 * 1024 * 1024;

/** The fields of `GET /info` Ferry reads. */
export interface EngineInfo {
  ServerVersion?: string;
  Driver?: string;
  DriverStatus?: [string, string][] | null;
  DockerRootDir?: string;
  [field: string]: unknown;
}

/** The fields of `GET /version` Ferry reads. */
export interface EngineVersion {
  Version: string;
  ApiVersion: string;
  [field: string]: unknown;
}

/** One entry of `GET /images/json`. */
export interface ImageSummary {
  Id: string;
  RepoTags?: string[] | null;
  Labels?: Record<string, string> | null;
  Size?: number;
}

/** One entry of `GET /containers/json`. */
export interface ContainerSummary {
  Id: string;
  Names?: string[];
  Image?: string;
  ImageID?: string;
  State?: string;
  Labels?: Record<string, string> | null;
}

/** The fields of `GET /images/{name}/json` Ferry reads. */
export interface ImageInspect {
  Id: string;
  RepoTags?: string[] | null;
  Size: number;
  RootFS?: { Type?: string; Layers?: string[] };
  Config?: { Labels?: Record<string, string> | null; [field: string]: unknown } | null;
}

/** Docker's record of a container's health checks. */
export interface HealthInspect {
  Status: string;
  FailingStreak: number;
  Log?: { Start: string; End: string; ExitCode: number; Output: string }[] | null;
}

/** The fields of `GET /containers/{id}/json` Ferry reads. */
export interface ContainerInspect {
  Id: string;
  Name: string;
  Image: string;
  State: { Status: string; Running: boolean; ExitCode: number; Health?: HealthInspect };
  /** Restarts by the container's restart policy since it was last started by hand. */
  RestartCount?: number;
  Config: { Image: string; Labels?: Record<string, string> | null; [field: string]: unknown };
  HostConfig?: Record<string, unknown>;
  /** The ports the engine published for the running container (`"80/tcp"` → bindings); null while stopped. */
  NetworkSettings?: { Ports?: Record<string, { HostIp: string; HostPort: string }[] | null> | null };
}

/** The HostConfig of a create request, as far as Ferry sends it. */
export interface HostConfig {
  NetworkMode: string;
  RestartPolicy: { Name: string };
  PortBindings?: Record<string, { HostIp: string; HostPort: string }[]>;
  Mounts?: { Type: 'bind' | 'volume'; Source: string; Target: string; ReadOnly: boolean }[];
  Memory?: number;
  NanoCpus?: number;
  CapAdd?: string[];
  Privileged?: boolean;
  PidMode?: string;
  IpcMode?: string;
  Devices?: { PathOnHost: string; PathInContainer: string; CgroupPermissions: string }[];
  SecurityOpt?: string[];
}

/** The body of `POST /containers/create`, as far as Ferry sends it. */
export interface ContainerCreateBody {
  Image: string;
  Env: string[];
  Labels: Record<string, string>;
  ExposedPorts?: Record<string, object>;
  Cmd?: string[];
  Entrypoint?: string[];
  User?: string;
  Healthcheck?: { Interval: number; Timeout: number; Retries: number; StartPeriod: number };
  HostConfig: HostConfig;
}

/**
 * A client for one Docker engine over node:http: the twenty-odd Engine API calls Ferry makes,
 * without the BuildKit (grpc, protobuf) and ssh machinery a general client loads at start-up.
 * Failures keep the shape callers match on: an engine's refusal is an {@link EngineError} with
 * `statusCode` and `json`; a socket failure is the system error with its `code` (ENOENT,
 * ECONNREFUSED…). 204 and 304 (start or stop of a container already there) are answers, not
 * failures.
 */
export class DockerEngine {
  /** Set when the engine is reached over a unix socket, i.e. it runs on this machine. */
  readonly socketPath: string | undefined;
  readonly #address: EngineAddress;
  // A connection per request: no idle socket to find closed by the engine, none to keep the
  // process alive, and a unix socket connects in microseconds.
  readonly #agent = new Agent({ keepAlive: false });

  constructor(address: EngineAddress) {
    this.#address = address;
    this.socketPath = 'socketPath' in address ? address.socketPath : undefined;
  }

  /** A JSON call: resolves to the parsed answer, or undefined when it has no body. */
  async json<T>(req: JsonRequest): Promise<T | undefined> {
    const method = req.method ?? 'GET';
    const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body));
    const res = await this.#send(method, req, payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(payload.length) }, (outgoing) => outgoing.end(payload));
    const body = await readBody(res, MAX_JSON_BODY);
    if (res.statusCode === 204 || res.statusCode === 304 || body.length === 0) return undefined;
    return parseBody(body, res) as T;
  }

  /**
   * A streamed call: resolves with the answer's body as it arrives, once the engine has said yes.
   * The request body, when given, is piped with backpressure; its failure aborts the request.
   * `signal` destroys the request and, later, the answer.
   */
  async stream(req: StreamRequest): Promise<IncomingMessage> {
    const method = req.method ?? (req.body ? 'POST' : 'GET');
    const source = req.body;
    const headers: Record<string, string> = source ? { 'content-type': req.contentType ?? 'application/x-tar' } : {};
    const res = await this.#send(method, req, headers, (outgoing) => {
      if (!source) {
        outgoing.end();
        return;
      }
      // Errors surface through the request's own 'error' (pipeline destroys it) or the answer.
      pipeline(source, outgoing, () => undefined);
    });
    return req.signal ? addAbortSignal(req.signal, res) : res;
  }

  ping(signal?: AbortSignal): Promise<unknown> {
    return this.json({ path: '/_ping', ...(signal ? { signal } : {}) });
  }

  async info(): Promise<EngineInfo> {
    return required(await this.json<EngineInfo>({ path: '/info' }), '/info');
  }

  async version(): Promise<EngineVersion> {
    return required(await this.json<EngineVersion>({ path: '/version' }), '/version');
  }

  async listImages(query: Query = {}): Promise<ImageSummary[]> {
    return (await this.json<ImageSummary[]>({ path: '/images/json', query })) ?? [];
  }

  async listContainers(query: Query = {}): Promise<ContainerSummary[]> {
    return (await this.json<ContainerSummary[]>({ path: '/containers/json', query })) ?? [];
  }

  async inspectImage(ref: string): Promise<ImageInspect> {
    const path = `/images/${namePath(ref)}/json`;
    return required(await this.json<ImageInspect>({ path }), path);
  }

  async inspectContainer(nameOrId: string): Promise<ContainerInspect> {
    const path = `/containers/${namePath(nameOrId)}/json`;
    return required(await this.json<ContainerInspect>({ path }), path);
  }

  #send(method: string, req: EngineRequest, headers: Record<string, string>, write: (outgoing: ReturnType<typeof httpRequest>) => void): Promise<IncomingMessage> {
    const path = req.path + encodeQuery(req.query ?? {});
    return new Promise<IncomingMessage>((resolve, reject) => {
      const outgoing = httpRequest({
        ...this.#address,
        ...('socketPath' in this.#address ? { host: 'docker' } : {}),
        agent: this.#agent,
        method,
        path,
        headers: { ...headers, accept: 'application/json' },
        ...(req.signal ? { signal: req.signal } : {}),
      });
      outgoing.on('error', reject);
      outgoing.once('response', (res) => {
        const status = res.statusCode ?? 0;
        if ((status >= 200 && status < 300) || status === 304) {
          resolve(res);
          return;
        }
        // The request may still be sending (a refused load): stop it, the answer is in.
        void readBody(res, MAX_ERROR_BODY).then(
          (body) => reject(new EngineError(status, body.length > 0 ? parseBody(body, res) : undefined, method, req.path)),
          reject,
        ).finally(() => outgoing.destroy());
      });
      write(outgoing);
    });
  }
}

/**
 * The query string as the Engine API reads it: booleans as `true`/`false`, objects (`filters`,
 * `buildargs`, `labels`) as one JSON string, arrays as repeated keys; undefined and null are left
 * out. Empty when there is nothing to send.
 */
export function encodeQuery(query: Query): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null) continue;
    if (Array.isArray(value)) for (const item of value as readonly string[]) params.append(key, item);
    else if (typeof value === 'object') params.append(key, JSON.stringify(value));
    else params.append(key, String(value));
  }
  const text = params.toString();
  return text === '' ? '' : `?${text}`;
}

/**
 * An image or container name as a path segment. References keep their `/`, `:` and `@` (the
 * engine's routes match `/images/{name:.*}/json`); anything else that could end the path early
 * (`?`, `#`, spaces) is escaped.
 */
export function namePath(name: string): string {
  return encodeURIComponent(name).replace(/%2F/gi, '/').replace(/%3A/gi, ':').replace(/%40/gi, '@');
}

/** The engine's words in an error body: `{ message }`, or the text itself. */
function wordsOf(json: unknown): string {
  if (json && typeof json === 'object' && typeof (json as { message?: unknown }).message === 'string') return (json as { message: string }).message.trim();
  return typeof json === 'string' ? json.trim() : '';
}

function parseBody(body: Buffer, res: IncomingMessage): unknown {
  const text = body.toString('utf8');
  // The engine answers JSON, but /_ping and a proxy's error page are text.
  if (!/json/i.test(res.headers['content-type'] ?? '') && !/^\s*[[{"]/.test(text)) return text;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function required<T>(value: T | undefined, path: string): T {
  if (value === undefined) throw new EngineError(502, { message: `the engine answered ${path} with an empty body` }, 'GET', path);
  return value;
}

async function readBody(res: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    if (size >= limit) continue;
    chunks.push(chunk);
    size += chunk.length;
  }
  return Buffer.concat(chunks).subarray(0, limit);
}
