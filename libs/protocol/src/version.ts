// The project's own manifest, not this package's: the release (npm run pack) is named after it,
// and every service and the CLI say the same version. The release's bundle carries it inlined.
import manifest from '../../../package.json' with { type: 'json' };

/** Ferry's version, as `ferry --version` prints it and a receiver signs it into its identity. */
export const FERRY_VERSION: string = manifest.version;
