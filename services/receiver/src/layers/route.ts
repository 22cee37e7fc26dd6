import type { IncomingMessage } from 'node:http';
import { Router } from 'express';
import { z } from 'zod';
import type { AuthLocals } from '@ferry/http';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS, IMAGE_ID_PATTERN, PATHS } from '@ferry/protocol';
import type { LayerInventory } from './inventory.ts';

/** A question names one image's layers; real images have tens, the format allows many more. */
const MAX_LAYERS = 1000;
const BODY_MAX_BYTES = 128 * 1024;

const QuestionSchema = z.strictObject({
  diffIds: z.array(z.string().regex(IMAGE_ID_PATTERN, 'sha256:<64 hex>')).min(1).max(MAX_LAYERS),
});

/**
 * `POST /v1/layers` `{"diffIds": [...]}` → `{"imageStore", "present": [...]}`: which bottom layers
 * of an image this host already holds, so that a sender can leave them out of the package.
 */
export function layersRouter(deps: { layers: LayerInventory }): Router {
  const router = Router();
  router.post(PATHS.layers, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    const body = await readJsonBody(req);
    if (digestOf(body) !== auth.contentDigest) {
      throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The body does not match ${HEADERS.contentDigest}` });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'The body is not JSON' });
    }
    const question = QuestionSchema.safeParse(parsed);
    if (!question.success) {
      throw new FerryError('FERRY_ERR_BAD_REQUEST', {
        message: 'Expected {"diffIds": ["sha256:<64 hex>", …]}',
        details: { problems: question.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`) },
      });
    }
    res.setHeader('Cache-Control', 'no-store');
    res.status(200).json(await deps.layers.present(question.data.diffIds));
  });
  return router;
}

async function readJsonBody(req: IncomingMessage): Promise<Buffer> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') throw new FerryError('FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', { message: 'The question is sent as Content-Type: application/json' });
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > BODY_MAX_BYTES) throw new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `The question exceeds ${BODY_MAX_BYTES} bytes` });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
