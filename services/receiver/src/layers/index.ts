export { LayerInventory, isContainerdStore, type ImageStoreKind, type LayerAnswer, type LayerEngine } from './inventory.ts';
export { layersRouter } from './route.ts';
