import type { NatsConnection } from 'nats';

export interface WatchedEvent {
  id: string;
  type: string;
  source: string;
  deploymentid: string;
  data: Record<string, unknown>;
}

/** An independent watcher: a plain NATS subscription, not Ferry's own reader. */
export class EventWatcher {
  readonly events: WatchedEvent[] = [];

  constructor(nc: NatsConnection, subject: string) {
    const sub = nc.subscribe(subject);
    void (async () => {
      for await (const msg of sub) this.events.push(msg.json<WatchedEvent>());
    })();
  }

  for(deploymentId: string): WatchedEvent[] {
    return this.events.filter((e) => e.deploymentid === deploymentId);
  }

  /** Waits for the deployment's first event of `type` (`ferry.` left out); a hang fails by the test's timeout. */
  async until(deploymentId: string, type: string): Promise<WatchedEvent> {
    for (;;) {
      const found = this.events.find((e) => e.deploymentid === deploymentId && e.type === `ferry.${type}`);
      if (found) return found;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
