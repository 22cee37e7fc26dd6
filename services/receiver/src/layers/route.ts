import { Router } from 'express';
import { z } from 'zod';
import { readSignedJson } from '@ferry/http';
import { FerryError, IMAGE_ID_PATTERN, PATHS } from '@ferry/protocol';
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
    const parsed = await readSignedJson(req, res, { maxBytes: BODY_MAX_BYTES });
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
