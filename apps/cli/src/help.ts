/**
 * What `ferry help` and `ferry help COMMAND` print. The texts live apart from the commands so that
 * asking for help loads none of a command's code (Docker, NATS, HTTP clients…): every command
 * module is imported only when that command runs (index.ts).
 */

export const HELP = `Usage: ferry COMMAND [options]

Commands:
  receiver    run a receiver in the foreground (configured by FERRY_* environment variables)
  push        package an image, send it to a receiver and deploy it
  deploy      deploy every service of a deployment file (ferry.yaml) to its targets
  sender      run the sender service (deployments over signed HTTP) in the foreground
  registry    run the registry (hosts, desired and actual state, drift, dashboard) in the foreground
  build       build a directory into an image on the build engine
  status      show a deployment, or a service's recent deployments, from a receiver's journal;
              without --to, a service's desired and actual state on every host (the registry)
  rollback    run a service's previous version again on a receiver, or return hosts to a release
  hosts       list the receivers registered with the registry; "hosts join-token" enrolls a new one
  drift       list services whose running container differs from what was deployed; exit 1 if any
  releases    list the releases the registry knows, newest first
  release     "release show ID": one release's phases, waves and each service's outcome on each host;
              "release promote|abort SERVICE" ends a canary by hand
  events      replay (or follow) deployment events from NATS JetStream
  key         "key new --id ID": make an Ed25519 key pair; "key show FILE": its public key and fingerprint
  trust       "trust add|remove|list": the keys, grants and revocations a receiver or registry trusts
  grant       "grant issue|show|revoke": grants and revocation lists signed with an admin key
  bundle      "bundle create|verify|apply|push|split|join": a whole release in one signed file (OCI layout)
  inventory   the layers this host's engine holds, for "bundle create --for-inventory" (air-gapped sites)
  version     Ferry's version and Node's (also "ferry --version"); with --to, a receiver's
  help        this text; "ferry help COMMAND" for one command

Exit codes: 0 success, 1 the deployment or request failed, 2 bad usage or configuration,
3 a peer (receiver, Docker, NATS) could not be reached.`;

const PUSH_HELP = `Usage: ferry push IMAGE --to URL [--to URL …] --name SERVICE [options]

Packages IMAGE from the build engine (DOCKER_HOST), uploads it signed to the receiver at URL, and
deploys it there as the container SERVICE. With several --to, the image is read once and sent to
every receiver, each retried on its own; the exit code is 0 only if every target succeeded.

Options:
  --to URL                 receiver base URL, e.g. http://10.0.0.5:7701 (required; repeat for more)
  --to selector:SELECTOR   every online host of the registry (FERRY_REGISTRY_URL) the
                           selector matches: K=V and K!=V terms joined by commas, all of
                           which must hold, e.g. selector:env=prod,role!=db (docs/protocol.md §2.3)
  --host-key SHA256:…      with one --to URL: the fingerprint of the host key that receiver
                           must prove (FERRY_ERR_HOST_KEY_MISMATCH otherwise); a selector's
                           hosts must prove the keys the registry enrolled for them
  --parallel N             targets served at once (default 5)
  --retries N              attempts per target, with backoff, after a lost connection, a
                           restarting receiver or a 5xx (default 8 with several targets, 1 with one)
  --name SERVICE           service (and container) name on the target (required)
  --health URL|tcp://HOST:PORT|cmd
                           health check run from the target host: an HTTP URL (2xx/3xx passes),
                           a TCP connect, or cmd = the image's own HEALTHCHECK, run by Docker
  --health-retries N       probes before the deployment fails and rolls back (default 30)
  --health-interval DURATION
                           pause between probes (default 1s)
  --health-timeout DURATION
                           limit of one probe (default 2s)
  --health-start-period DURATION
                           wait before the first probe (default 0)
                           (durations: 500ms, 2s, 1m, 1h, 1m30s…; a plain number is milliseconds)
                           A check of 127.0.0.1 or localhost on the bridge network needs its
                           port published (-p N:N) or --network host: without, the push is refused.

Container options (spelled as for docker run; the receiver's policy decides what it allows):
  -e, --env KEY=VALUE      environment variable; repeat for more. KEY alone passes on this
                           environment's KEY (left out when it is not set), as docker run does
  --env-file FILE          KEY=VALUE lines as docker run reads them (# comments, values as
                           written, no quotes removed; KEY alone as -e KEY); -e wins over it
  --network host|bridge|none   container network (default bridge)
  -p, --publish [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]
                           publish a port (bridge network only); repeat for more
  -v, --volume SOURCE:TARGET[:ro|rw]
                           mount a named volume, or a host path (absolute) the receiver's
                           policy allows (FERRY_POLICY_BIND_SOURCES); repeat for more
  -m, --memory BYTES[b|k|m|g]  memory limit, at least 6m
  --cpus N                 CPU limit, e.g. 0.5 or 2
  --cap-add CAP            add a Linux capability, e.g. NET_ADMIN (policy: FERRY_POLICY_CAPABILITIES)
  --restart no|unless-stopped|on-failure|always   restart policy
  -l, --label KEY[=VALUE]  container label (not "ferry.*"); repeat for more
  -u, --user USER[:GROUP]  user to run as, names or numeric ids
  --entrypoint CMD         replace the image's ENTRYPOINT by one executable ("" clears it)
  --command "CMD ARG…"     replace the image's CMD: words split like a shell does, or a JSON
                           array; or give them last, after "--": ferry push … -- sh -c 'x'
  --privileged, --device HOST[:CONTAINER[:rwm]], --security-opt OPT, --pid host, --ipc host|shareable
                           asked for, not granted: every receiver refuses them unless its
                           operator allowed them in its policy

Transfer options:
  --compression auto|zstd|gzip|none (default auto: chosen for the link, so the push ends
                           soonest — none on loopback; on a private address a stream starts
                           uncompressed and changes to zstd when its first parts show a slow
                           link; zstd 3 on a public address; the choice and why are printed)
  --no-layer-negotiation   always send every layer (by default each target is asked which
                           layers it holds, and those are left out of the package)
  --no-stream              package the image to a file first and upload it afterwards
                           (default: stream while the image is read; several targets share
                           one read, and one that falls behind gets a spooled copy)
  --no-layer-store         always export the image with docker save (by default, when the
                           build engine runs here on overlay2 and its data root is readable,
                           the layers are read straight from its layer store)
  --resumable-threshold BYTES  packages of at least BYTES go over the resumable upload, which
                           resumes after a cut connection (default 67108864 = 64 MiB)
  --build CONTEXT          first build the directory CONTEXT into IMAGE on the build engine
                           (events build.started / build.completed under the deployment id)
  -f, --file PATH          with --build: Dockerfile, relative to CONTEXT
  --build-arg KEY=VALUE    with --build: build-time variable; repeat for more
  --max-image-size BYTES   with --build: refuse a built image larger than BYTES (default 2 GiB)
  --json                   print one JSON result on stdout instead of text; progress goes to
                           stderr as JSON lines ({"progress": "stage"|"sent"|"deploy"|"retry"|
                           "done"|"interrupted", …}: docs/usage.md, "Progress")

Progress goes to stderr: on a terminal one line per target, redrawn in place, with the bytes sent,
rate and ETA, then the receiver's stages (verifying, loading, starting, health check); plain lines
otherwise. Ctrl-C stops the push: uploads are cut off and streams deleted, each target's state is
printed (not started, interrupted at N of M, deploying, deployed), and the exit code is 130.

Environment: FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (the signing key), DOCKER_HOST (build engine),
FERRY_NATS_URL (optional: publish the sender's events), FERRY_REGISTRY_URL (optional: resolves
selectors and records each successful deployment as the service's desired state on that host).`;

const DEPLOY_HELP = `Usage: ferry deploy [-f ferry.yaml] [options]

Deploys every service of a deployment file as one release (an id, rel-…, in every manifest):
phase after phase (phases: in the file, or computed from depends_on), the services of a phase at
once; each is built on the build engine if it has "build" when its phase starts, packaged once,
and sent to all its targets (receiver URLs, or selector:K=V,K!=V… resolved by the registry). A
phase starts when every service of the one before is deployed on every host. A phase that fails
halts the release (FERRY_ERR_RELEASE_HALTED): later phases are neither built nor deployed, and
what the release deployed is rolled back on every host, last phase first, to the release each
host ran before. With "rollout:" in the file, the hosts go in waves (a canary, then 25 %, then
the rest…), each wave through every phase before the next; a wave with more unhealthy hosts
than max_unhealthy halts the release and rolls it back on every host it reached. "pause: manual"
stops after its wave with exit code 0 until "ferry release continue ID". The exit code is 0 only
if every target of every service succeeded, or the release paused. The file format is in
docs/usage.md ("Deployment files").

Options:
  -f, --file PATH     the deployment file (default ferry.yaml)
  --only SERVICE      deploy only this service; repeat, or separate with commas
  --parallel N        services of one phase, and targets of one service, served at once (default 5)
  --retries N         attempts per target, with backoff (default 8)
  --no-rollback       when the release halts, leave what it deployed as it is
  -e, --env KEY[=VALUE]  set a variable in every service's container, over the file's env
                      (KEY alone: from this environment, left out when unset; repeat for more)
  --env-file FILE     the same from a file of KEY=VALUE lines, as docker run --env-file reads it
  --json              one JSON line per service, then a summary line with the release record

Environment: FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (the signing key), DOCKER_HOST (build engine),
FERRY_NATS_URL (optional: events), FERRY_REGISTRY_URL (selectors, desired state). Env values in
the file may use \${VAR}, \${VAR:-default} and $$ from this environment.`;

const BUILD_HELP = `Usage: ferry build CONTEXT -t NAME[:TAG] [options]

Builds the directory CONTEXT into an image on the build engine (DOCKER_HOST) and prints the
build log. The context is streamed to the engine as a tar; .dockerignore is honoured for plain
patterns (no "!" exceptions, no "**").

Options:
  -t, --tag NAME[:TAG]     name of the built image (required)
  -f, --file PATH          Dockerfile, relative to CONTEXT (default Dockerfile)
  --build-arg KEY=VALUE    build-time variable; repeat for more
  --max-image-size BYTES   refuse a built image larger than BYTES (default 2147483648 = 2 GiB)
  --json                   print one JSON result on stdout; the log goes to stderr as JSON lines

Environment: DOCKER_HOST (build engine).`;

const STATUS_HELP = `Usage: ferry status ID --to URL [--json]
       ferry status --to URL --service SERVICE [--limit N] [--json]
       ferry status SERVICE [--json]      (asks the registry: FERRY_REGISTRY_URL)

Shows one deployment (or rollback) as the receiver at URL journalled it: its state, every state
it went through with the time, its timings and its error; or the recent deployments of SERVICE,
newest first (--limit, default 20, at most 500). A FAILED deployment is still found: the exit code
says whether the receiver knows it (0) or not (1, FERRY_ERR_NOT_FOUND). Without --to, SERVICE is
looked up in the registry: on every host, what was deployed (desired) against what runs (actual,
from the receivers' heartbeats) and any drift.

Options:
  --to URL           receiver base URL (required)
  --service SERVICE  list this service's deployments instead of showing one
  --limit N          how many to list
  --json             print the receiver's records as JSON

Environment: FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (the signing key).`;

const ROLLBACK_HELP = `Usage: ferry rollback SERVICE --to URL [--json]
       ferry rollback --to-release ID [SERVICE] [--service S]… [--to URL|selector:…]… [-f FILE] [options]

Asks the receiver at URL to run SERVICE's previous version again: the container it kept from the
last deployment takes the service's name, and the one it replaces is kept in turn, so a second
rollback rolls forward. Prints what runs now.

With --to-release ID, returns hosts to a release they retain (each receiver keeps its services'
last releases): every service of that release on each host, or only the ones named, the last
phase first, each through the receiver's rollback to that release (its image and signed spec
run again, checked as a deployment is). The hosts are the --to ones, else every target of the
deployment file. A host that does not retain the release changes nothing and is reported. The
exit code is 0 only if every service of every host runs the release again. The releases the
hosts leave are told on FERRY_NATS_URL as a release's own rollback is (release.rollback.started,
release.rolled_back), so that the registry shows them rolled back.

Options:
  --to URL            receiver base URL (required without --to-release; with it repeatable,
                      selector:… too)
  --to-release ID     the release to return to (rel-…, as "ferry releases" lists them)
  --service S         with --to-release: only this service; repeat, or separate with commas
  -f, --file PATH     with --to-release and no --to: the hosts are this file's targets
                      (default ferry.yaml)
  --parallel N        with --to-release: requests at once (default 5)
  --retries N         with --to-release: attempts per request when the call is cut or the
                      service busy (default 8)
  --json              print the receiver's answer (with --to-release: every host's) as JSON

Environment: FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (the signing key); FERRY_REGISTRY_URL
for selector:… targets and the project of each release left; FERRY_NATS_URL for its events.`;

const HOSTS_HELP = `Usage: ferry hosts [--selector SELECTOR] [--status online|lost] [--json]
       ferry hosts join-token HOST_ID [--labels K=V[,K=V…]] [--ttl DURATION] [--replace] [--json]

Lists the receivers registered with the registry: id, status (online, or lost when its heartbeats
stopped), the URL senders reach it at, its labels, its version and when it was last heard from.
--selector keeps the hosts it matches — the hosts "ferry push --to selector:…" would deploy to,
when online. A selector is K=V and K!=V terms joined by commas, all of which must hold
(docs/protocol.md §2.3).

Options:
  --selector SELECTOR    only hosts it matches, e.g. env=prod,role!=db
  --status online|lost   only hosts in this state
  --json                 print {"hosts": [...]} as the registry answers it

"ferry hosts join-token" asks the registry (with an admin key) for a one-time token the host's
receiver enrolls its own host key with (FERRY_JOIN_TOKEN, or deploy/bootstrap.sh --join-token).
The token is printed once on stdout; the registry keeps only its hash.
  --labels K=V[,K=V…]    the labels the host must register with (pinned; default: its own)
  --ttl DURATION         how long the token may wait to be used, e.g. 30m or 2d (default 1h,
                         at most 7d; a plain number is seconds)
  --replace              let an enrolled host enroll a new key in place of its old one

Environment: FERRY_REGISTRY_URL (required), FERRY_KEY_ID and FERRY_KEY_FILE or FERRY_KEY (the
signing key), FERRY_GRANT_FILE or FERRY_GRANT (its grant, when it has one).`;

const DRIFT_HELP = `Usage: ferry drift [--json]

Lists the services whose running container differs from what was last deployed to that host, as
the registry sees it from the receivers' heartbeats: another image, another configuration, a
stopped container (state) or none at all (missing). Exits 1 when anything drifted and 0 when
nothing did, so a script or a CI step can gate on it.

Options:
  --json   print {"ok": BOOLEAN, "drift": [...]} (the registry's service states)

Environment: FERRY_REGISTRY_URL (required), FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (the signing key).`;

const EVENTS_HELP = `Usage: ferry events [--deployment ID] [--service S] [--host H] [--follow] [--json]

Replays Ferry's events from NATS JetStream (FERRY_NATS_URL), oldest first; --follow keeps
printing new ones until interrupted (Ctrl-C ends it with exit code 0). --service and --host
narrow the read on the server, also while following.`;

const KEY_HELP = `Usage: ferry key new --id KEY_ID [--out FILE] [--json]
       ferry key show FILE | --data-dir DIR [--json]

"key new" makes an Ed25519 key pair: the private key goes to FILE (default ./KEY_ID.key, mode
0600, never overwritten, never printed); the public key and its fingerprint are printed, to be
trusted ("ferry trust add") or granted ("ferry grant issue"). The same key works with openssl:
"openssl genpkey -algorithm ed25519" makes an equivalent one.
"key show" prints the public key and fingerprint of a private key file, or of a receiver's own
host key (--data-dir: its FERRY_DATA_DIR), and warns when other users can read the file.

A sender signs with FERRY_KEY_ID and FERRY_KEY_FILE (or FERRY_KEY, the PEM itself), and sends its
grant with every request when FERRY_GRANT_FILE (or FERRY_GRANT) names one.`;

const TRUST_HELP = `Usage: ferry trust add --id KEY_ID --public-key KEY --role ROLE [scope] [--file TRUST_FILE]
       ferry trust add GRANT_OR_REVOCATION_FILE [--file TRUST_FILE]
       ferry trust remove KEY_ID|GRANT_ID [--drop-signed] [--file TRUST_FILE]
       ferry trust list [--file TRUST_FILE] [--json]

Edits the trust file of a receiver, registry or sender service: --file, else FERRY_TRUST_FILE,
else $FERRY_DATA_DIR/trust.json (/var/lib/ferry/trust.json), the file the service reads. It is
checked as the service would check it, then written whole and 0600; a running service reads it
again within a second. A key is trusted with a scope:
  --role deploy|read|admin|host   what it may do (deploy also reads; admin keys of the trust
                                  file also sign grants and revocation lists)
  --service GLOB                  services it may deploy, e.g. web-* (repeatable; default *)
  --host ID|SELECTOR              hosts, by id (globs) or label selector such as env=prod,role!=db
                                  (docs/protocol.md §2.3; repeatable; default *)
  --not-before WHEN, --not-after WHEN   ISO 8601 with a zone, or a span from now (90d)
  --grace DURATION                after --not-after it still works, with a warning event (7d)
KEY is base64 of the raw 32-byte public key (as "ferry key new" prints it), a PEM, or a file
holding either; a private key is refused. A grant or revocation list is added only when an admin
key of the file signed it. "trust remove" of an admin key that signed grants or revocation lists
in the file needs --drop-signed (issue them again with another admin key first). "trust list"
shows every key with its scope and its state now (valid, grace, expired, not-yet, revoked).`;

const GRANT_HELP = `Usage: ferry grant issue --id KEY_ID --public-key KEY --role ROLE [scope] [--note TEXT] [--out FILE]
       ferry grant revoke [--key KEY_ID|FINGERPRINT]… [--grant GRANT_ID]… [--out FILE]
       ferry grant show FILE [--trust TRUST_FILE] [--json]

A grant is a small document signed by an admin key: which key, which role, which services and
hosts, from when until when and with how much grace (scope options as for "ferry trust add").
Give it to the key's holder (FERRY_GRANT_FILE: sent with every request, so a service whose trust
file holds the admin key needs nothing more) or add it to trust files. A revocation list refuses
keys (by id or fingerprint) and grants (by id) wherever it is added ("ferry trust add FILE").
The admin key signs: --key-id ID --key-file FILE, or FERRY_KEY_ID and FERRY_KEY_FILE.
"grant show" prints a grant or list; with --trust it says whether that trust file accepts it now
(signed by one of its admin keys, not revoked, in force) and exits 1 when it does not.`;

const VERSION_HELP = `Usage: ferry version [--json]
       ferry --version
       ferry version --to URL [--host-key SHA256:…] [--json]

Prints Ferry's version and the version of Node.js it runs on. With --to, also asks the receiver
at URL which version it runs: the receiver names it in its signed identity (GET /v1/identity),
which is checked here like every sender checks it (signed by the host key it names, over a fresh
challenge; with --host-key, by that key), so the answer comes from that receiver and no key of
yours is needed. Useful before and after upgrading hosts.

Options:
  --to URL             receiver base URL, e.g. http://10.0.0.5:7701
  --host-key SHA256:…  the fingerprint of the host key that receiver must prove
                       (FERRY_ERR_HOST_KEY_MISMATCH otherwise)
  --json               print {"ferry", "node"} (and "receiver": {"url", "host", "version",
                       "hostKey"}) as JSON`;

const RELEASES_HELP = `Usage: ferry releases [--project NAME] [--limit N] [--before ID] [--json]

Lists the releases the registry (FERRY_REGISTRY_URL) knows, newest first: each release's id,
project, state (in-progress, paused, completed, failed, rolling-back, rolled-back), how many
services and hosts it has, and when it began. The registry learns them from the event stream:
the release events "ferry deploy" publishes and the receivers' events of each deployment.

Options:
  --project NAME   only this project's releases (the deployment file's name)
  --limit N        releases per page, 1 to 200 (default 20); the next page's command is printed
                   on stderr when there is one
  --before ID      the page of releases older than release ID
  --json           print {"releases": [...], "next"?: ID} as the registry answers it

Environment: FERRY_REGISTRY_URL, FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (a key that may read).`;

const RELEASE_HELP = `Usage: ferry release show ID [--json]
       ferry release continue ID [-f ferry.yaml] [deploy options]
       ferry release promote|abort SERVICE [--to URL]… [-f ferry.yaml] [--json]

"release show" shows one release as the registry knows it: its state, error and the release it was rolled back
to, its phases (with their services), its waves (with their hosts), each service's image, and
the outcome of each service on each host: pending, deploying, healthy, failed, skipped,
rolled-back or rollback-failed. ID is a release id as "ferry releases" lists it
(rel-YYYYMMDDTHHMMSSZ-<8 hex>).
  --json   print {"release": {...}} as the registry answers it
Environment: FERRY_REGISTRY_URL, FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (a key that may read).

"release continue" goes on with a release that "ferry deploy" paused after a wave with
"pause: manual", from its next wave, on the machine that paused it (kept in
FERRY_DATA_DIR/paused-releases, else ~/.local/state/ferry/paused-releases). It takes the options
of "ferry deploy" but --only, and needs the same file with the same values (-e, --env-file, the
environment): another one, or an image tag that moved, is refused and the release stays paused;
so is one whose waves to go would now overcommit a host's budget (FERRY_ERR_OVER_BUDGET, asked
again of those hosts before anything is sent). It prints and exits as "ferry deploy" does.

"release promote" and "release abort" end the canary of SERVICE in progress on each host by hand,
without waiting for its window: promote moves all its traffic to the new container (the old one
is drained), abort sends it back to the one before and fails that deployment with
FERRY_ERR_CANARY_ABORTED. The hosts are the --to URLs, else the service's targets in the file.
Exit code 0 when at least one host had a canary of SERVICE and none refused.
  --to URL         a receiver's base URL; repeat for several hosts
  -f, --file PATH  with no --to: the service's targets in this file (default ferry.yaml)
  --json           print {"service", "command", "hosts": [{url, ok, code?, message?}]}
Environment: FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY (a key that may deploy the service).`;

const BUNDLE_HELP = `Usage: ferry bundle create -f ferry.yaml -o app.ferry [--key FILE --key-id ID] [--grant FILE] [--since OLD.ferry | --for-inventory HOST.json]
       ferry bundle verify app.ferry [--trust FILE] [--json]
       ferry bundle apply app.ferry [--json]
       ferry bundle push app.ferry --to URL [--to URL …] [--parallel N] [--retries N] [--json]
       ferry bundle split app.ferry [--size 100m]
       ferry bundle join app.ferry.part-000 [-o FILE]
       ferry bundle store app.ferry [--as NAME] [--bucket B] [--json]
       ferry bundle stored [--bucket B] [--json]
       ferry bundle fetch NAME [-o FILE] [--bucket B]

A bundle is a whole release in one signed file, for sites without a network path to the sender
and for keeping releases: the deployment file's services (specs, phases, rollout) and every image
they run, each layer stored once (zstd, named by its SHA-256) in the OCI image layout, so skopeo,
crane and containerd read its images too (skopeo inspect oci-archive:app.ferry:SERVICE). Its
ferry/release.json names index.json's digest and is signed with Ed25519 (ferry/signature).

create   reads each image from the build engine (DOCKER_HOST) with docker save, streamed
  -f, --file FILE    the deployment file (default ferry.yaml); its targets are not used
  -o, --out FILE     the bundle to write (written beside it, then renamed: never half a file)
  --key FILE, --key-id ID
                     the signing key (default FERRY_KEY_FILE or FERRY_KEY, and FERRY_KEY_ID)
  --grant FILE       embeds the customer's grant for that key: the licence the bundle is applied
                     under (its end and grace period)
  --since OLD.ferry  a differential bundle: leaves out the layers OLD.ferry carries
  --for-inventory HOST.json
                     a differential bundle: leaves out the layers the host holds, as
                     "ferry inventory" there wrote them (named uncompressed, by diff id)
  --level N          zstd level of the layers, 1-19 (default 3)
verify   checks the archive's entries, the signature, index.json, every blob's SHA-256, the
         manifests and configs against release.json; exit 0 only if all of it holds
  --trust FILE       also checks the signer against a trust file (and the embedded grant)
apply    on the host itself, as its receiver would: verifies all of the bundle, the signer against
         the receiver's trust file (FERRY_TRUST_FILE) and grants, the policy, then loads each
         image into the engine (DOCKER_HOST) and deploys the services phase after phase, with
         their health checks; a failed phase rolls back what the apply deployed. Uses the
         receiver's settings (FERRY_DATA_DIR, FERRY_HOST_ID, FERRY_LABELS, FERRY_POLICY_*,
         FERRY_NATS_URL for events). It takes the data directory's lock: where a receiver runs
         on it, it fails at once (FERRY_ERR_DATA_DIR_LOCKED): stop the receiver, or give apply
         its own FERRY_DATA_DIR.
push     sends the bundle's images to receivers through the sender's delivery (no build engine),
         phase after phase, signed with FERRY_KEY_ID and FERRY_KEY_FILE as "ferry deploy" is; the
         receivers check that key's grant. A differential bundle cannot be pushed.
split    cuts the file into parts of --size bytes (default 1g): FILE.part-000… and FILE.parts,
         which lists each part's SHA-256; verify, apply and join take the first part
join     checks every part and the whole, and writes the bundle (-o, default its own name)
store    verifies the bundle, then puts it in the NATS JetStream object store
         (FERRY_BUNDLE_STORE_URL, default FERRY_NATS_URL; bucket FERRY_BUNDLE_BUCKET, default
         ferry-bundles) under --as NAME (default the file's name)
stored   lists the bundles in the store
fetch    gets NAME back, checked against the store's SHA-256 and verified as a bundle before it
         is renamed to -o FILE (default NAME); a bundle that does not verify leaves no file

Errors: FERRY_ERR_BUNDLE_MALFORMED, FERRY_ERR_UNSAFE_ARCHIVE, FERRY_ERR_BUNDLE_SIGNATURE,
FERRY_ERR_BUNDLE_DIGEST, FERRY_ERR_BUNDLE_BASE_MISSING, FERRY_ERR_LICENCE_EXPIRED,
FERRY_ERR_DATA_DIR_LOCKED, FERRY_ERR_BAD_INVENTORY. docs/bundles.md.`;

const INVENTORY_HELP = `Usage: ferry inventory [-o host.json] [--host NAME]

Lists the layers the engine at DOCKER_HOST holds (each image's diff ids, bottom first) as a
ferry.inventory/v1 JSON document: on stdout, or written whole to -o FILE. Carried out of a site no
network reaches, it lets "ferry bundle create --for-inventory host.json" leave out every layer the
site holds. It holds layer digests only: no image name, tag, container or setting.

  -o, --out FILE   the file to write (beside it, then renamed)
  --host NAME      the name the inventory (and a bundle made for it) carries (default
                   FERRY_HOST_ID, else the host name)

docs/bundles.md.`;

export const HELPS: Readonly<Record<string, string>> = { push: PUSH_HELP, deploy: DEPLOY_HELP, build: BUILD_HELP, events: EVENTS_HELP, key: KEY_HELP, trust: TRUST_HELP, grant: GRANT_HELP, status: STATUS_HELP, rollback: ROLLBACK_HELP, hosts: HOSTS_HELP, drift: DRIFT_HELP, releases: RELEASES_HELP, release: RELEASE_HELP, bundle: BUNDLE_HELP, inventory: INVENTORY_HELP, version: VERSION_HELP };
