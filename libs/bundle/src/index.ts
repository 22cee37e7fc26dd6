export { createBundle, type BaseLayers, type CreateOptions, type CreateResult, type ImageSource, type ReleaseInput, type ServiceInput } from './create.ts';
export { openBundle, type VerifiedBundle } from './open.ts';
export { dockerArchive, dockerArchiveSize } from './docker-archive.ts';
export { splitBundle, joinBundle, checkedParts, partOf, PARTS_SCHEMA, type PartsList } from './split.ts';
export { scanBundle, MAX_ENTRIES, type Entry } from './scan.ts';
export { FileSource, type ByteSource } from './source.ts';
export { releaseMessage, releaseSignedBy, parseSignature, type BundleSignature } from './signature.ts';
export { BUNDLE_SCHEMA, ReleaseDocumentSchema, type BundleLayer, type BundleService, type ReleaseDocument } from './release.ts';
export { INDEX, MEDIA, OCI_LAYOUT, REF_NAME, IMAGE_REF, RELEASE, SIGNATURE, blobPath } from './layout.ts';
