import { FerryError } from '@ferry/protocol';
import { DockerEngine } from './engine.ts';

const DEFAULT_TCP_PORT = 2375;
const DEFAULT_SOCKET = '/var/run/docker.sock';

/**
 * A client for one engine. `dockerHost` takes the DOCKER_HOST forms Ferry supports:
 * `unix:///path/to/docker.sock` or `tcp://host[:port]` (plain HTTP, default port 2375). Without it,
 * the DOCKER_HOST environment variable applies when set, else `/var/run/docker.sock`.
 */
export function createDockerClient(dockerHost?: string): DockerEngine {
  if (dockerHost === undefined || dockerHost.trim() === '') {
    const fromEnv = process.env.DOCKER_HOST?.trim();
    return fromEnv ? parseHost(fromEnv) : new DockerEngine({ socketPath: DEFAULT_SOCKET });
  }
  return parseHost(dockerHost);
}

function parseHost(dockerHost: string): DockerEngine {
  const value = dockerHost.trim();
  if (value.startsWith('unix://')) {
    const socketPath = value.slice('unix://'.length);
    if (!socketPath.startsWith('/')) throw invalid(dockerHost, 'a unix socket needs an absolute path');
    return new DockerEngine({ socketPath });
  }
  if (value.startsWith('tcp://')) {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw invalid(dockerHost, 'not a valid tcp:// address');
    }
    if (!url.hostname) throw invalid(dockerHost, 'the host is missing');
    // URL keeps the brackets of an IPv6 literal; the socket layer wants the bare address.
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = url.port ? Number(url.port) : DEFAULT_TCP_PORT;
    return new DockerEngine({ host, port });
  }
  throw invalid(dockerHost, 'expected unix:///path or tcp://host:port');
}

function invalid(dockerHost: string, why: string): FerryError {
  return new FerryError('FERRY_ERR_CONFIG', { message: `Invalid Docker host "${dockerHost}": ${why}` });
}
