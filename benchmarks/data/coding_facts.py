"""The coding-memories labelled set (issue 15): facts a coding agent stored during sessions
across five repositories and their branches, each with two paraphrased questions an agent
would ask later. Written by hand for this benchmark; the paraphrases avoid the fact's own key
words where a person would (\"why did we pin pandas\" -> \"reason the dataframe library is held
at an old version\"). benchmarks/coding_memories.py adds templated session chatter around each
fact (the distractors) and the filters.

Fields: key, repo, branch, event_type, days_ago, content, (query, query).
"""

FACTS: list[tuple[str, str, str, str, int, str, tuple[str, str]]] = [
    # -- ml-pipeline --------------------------------------------------------------------------
    ("pandas-pin", "ml-pipeline", "main", "decision", 20,
     "Pinned pandas to 2.1.4 in requirements.txt: pandas 2.2 changed the default of "
     "observed= in groupby on categoricals and our feature aggregation silently doubled rows.",
     ("why did we pin pandas", "reason the dataframe library is held at an older release")),
    ("lgbm-leaves", "ml-pipeline", "exp/lightgbm", "decision", 12,
     "LightGBM experiment: num_leaves=63 with min_data_in_leaf=200 beat the XGBoost baseline by "
     "1.8 AUC points on the March holdout; 255 leaves overfit badly.",
     ("what tree size did the gradient boosting experiment settle on",
      "which lightgbm hyperparameters won against xgboost")),
    ("feature-store-ttl", "ml-pipeline", "main", "code_change", 30,
     "Set the feature store cache TTL to 6 hours in features/store.py; 24h served stale "
     "user embeddings after the nightly retrain.",
     ("how long do cached features live", "stale user vectors after nightly training fix")),
    ("airflow-retry", "ml-pipeline", "main", "problem", 5,
     "The nightly Airflow DAG train_ranker failed because the S3 sensor timed out at 02:00; "
     "raised poke timeout to 3h and added retries=2 with exponential backoff.",
     ("what broke the nightly training job last week",
      "why did the ranker dag fail overnight")),
    ("parquet-snappy", "ml-pipeline", "main", "decision", 45,
     "Switched the training snapshots from CSV to Parquet with zstd compression: 7x smaller "
     "on S3 and loading went from 90s to 11s.",
     ("what file format do training snapshots use now",
      "why are the dataset dumps no longer csv")),
    ("seed-nondeterminism", "ml-pipeline", "exp/lightgbm", "problem", 10,
     "Runs were not reproducible: LightGBM used all threads and deterministic=False; set "
     "deterministic=True, force_row_wise=True and seed=17 in the config.",
     ("how did we make the boosting runs repeatable",
      "results differed between identical training runs, what was the fix")),
    ("gpu-oom", "ml-pipeline", "main", "problem", 3,
     "CUDA out of memory in the embedding trainer at batch 512 on the T4 nodes; enabled "
     "gradient checkpointing and dropped batch size to 256 with 2-step accumulation.",
     ("the embedding training crashed on the graphics card, what did we change",
      "how was the out of memory error in training solved")),
    ("label-leak", "ml-pipeline", "main", "problem", 25,
     "Found label leakage: the days_since_last_purchase feature was computed after the label "
     "window. Moved its cutoff to the snapshot date; offline AUC dropped from 0.91 to 0.84.",
     ("why did offline auc fall so much", "which feature leaked the target")),
    ("mlflow-tracking", "ml-pipeline", "main", "decision", 60,
     "Chose MLflow over Weights & Biases for experiment tracking: it runs self-hosted next to "
     "the data and legal would not approve sending features to a SaaS.",
     ("why do we track experiments with mlflow", "why not use wandb for runs")),
    ("sklearn-pin", "ml-pipeline", "exp/lightgbm", "code_change", 14,
     "Pinned scikit-learn<1.5 on the experiment branch because the pickled calibrators fail to "
     "unpickle with 1.5 (private module path changed).",
     ("why is sklearn capped on the experiment branch",
      "calibration model fails to load after upgrading scikit")),
    ("dvc-remote", "ml-pipeline", "main", "code_change", 40,
     "Configured the DVC remote to s3://ml-artifacts/dvc with a 30 day lifecycle on "
     "non-current versions to stop the bucket growing 200GB a month.",
     ("where does dvc push the data", "how did we stop the artifact bucket from growing")),
    ("onnx-export", "ml-pipeline", "main", "code_change", 8,
     "Exported the ranker to ONNX opset 17 for serving; dynamic axes on batch only, sequence "
     "length fixed at 128 because the runtime rejected fully dynamic shapes.",
     ("how is the ranking model packaged for inference",
      "why is the sequence length fixed in the exported model")),
    ("tokenizer-bug", "ml-pipeline", "main", "problem", 2,
     "Tokenizer bug: lowercase=True was applied twice, once in preprocessing and once in the "
     "HF tokenizer, so accented names lost their accents. Removed the preprocessing step.",
     ("why were accents missing from names in the model input",
      "text normalisation happening twice issue")),
    ("pandas-numpy2", "ml-pipeline", "exp/lightgbm", "problem", 9,
     "numpy 2.0 broke the experiment branch: lightgbm wheel built against numpy 1.x raised "
     "'module compiled against ABI version'. Pinned numpy<2 there until lightgbm 4.4.",
     ("import error about abi version on the boosting branch",
      "why is numpy held below 2 for the experiment")),
    ("spark-skew", "ml-pipeline", "main", "problem", 35,
     "Spark join of events with users was skewed on the anonymous user id; salted the key "
     "with 16 buckets and the stage went from 40 min to 6 min.",
     ("why was the spark join so slow", "how did we fix the skewed partition")),
    # -- shop-api -----------------------------------------------------------------------------
    ("login-redirect", "shop-api", "fix/login-redirect", "problem", 4,
     "The login page broke after the session cookie got SameSite=Strict: the OAuth callback "
     "from the identity provider arrived without the cookie and looped back to /login. Set "
     "SameSite=Lax.",
     ("what broke the login page last week", "why did sign in loop back to the form")),
    ("checkout-idempotency", "shop-api", "feat/checkout-v2", "decision", 11,
     "Checkout v2 sends an Idempotency-Key header per payment attempt and stores it 24h in "
     "Redis so a client retry never charges the card twice.",
     ("how do we avoid double charging on retries", "what prevents duplicate payments")),
    ("pg-pool", "shop-api", "main", "problem", 15,
     "Postgres ran out of connections at peak: each gunicorn worker had its own SQLAlchemy "
     "pool of 20. Put PgBouncer in transaction mode in front and cut pool_size to 5.",
     ("why did the database refuse connections at peak traffic",
      "too many clients error on postgres, what changed")),
    ("n-plus-one", "shop-api", "main", "code_change", 22,
     "Fixed an N+1 query on GET /orders: added selectinload(Order.items) and the endpoint "
     "p95 dropped from 1.2s to 140ms.",
     ("why was the orders endpoint slow", "what made order listing fast again")),
    ("jwt-rotation", "shop-api", "main", "decision", 50,
     "Access tokens now expire after 15 minutes with refresh tokens rotating on every use; a "
     "reused refresh token revokes the whole family.",
     ("how long are access tokens valid", "what happens when a refresh token is replayed")),
    ("stripe-webhook", "shop-api", "feat/checkout-v2", "problem", 6,
     "Stripe webhooks failed signature verification because the framework parsed the JSON "
     "body before we read the raw bytes; the webhook route now reads request.body() raw.",
     ("why did payment provider callbacks get rejected",
      "signature mismatch on incoming payment events")),
    ("rate-limit-login", "shop-api", "fix/login-redirect", "code_change", 3,
     "Added a rate limit of 5 failed logins per minute per IP and per account on POST "
     "/auth/login, backed by Redis sliding windows.",
     ("how many wrong passwords before we throttle", "brute force protection on sign in")),
    ("alembic-conflict", "shop-api", "main", "problem", 18,
     "Two Alembic heads after merging feat/checkout-v2: created a merge revision "
     "7c1e_merge_heads instead of editing down_revision by hand.",
     ("multiple migration heads after a merge, how was it resolved",
      "what did we do about the branching database migrations")),
    ("price-rounding", "shop-api", "feat/checkout-v2", "problem", 13,
     "Totals were off by a cent: float arithmetic on prices. Money is now integer cents end to "
     "end and Decimal only at the API boundary.",
     ("why were order totals one cent wrong", "how do we represent money amounts")),
    ("cors-admin", "shop-api", "main", "code_change", 27,
     "CORS: allowed origins are now read from ALLOWED_ORIGINS; the admin SPA on "
     "admin.example.com was blocked by the wildcard-free policy.",
     ("why could the admin frontend not call the api",
      "where is the list of permitted browser origins configured")),
    ("celery-visibility", "shop-api", "main", "problem", 33,
     "Emails were sent twice: Celery tasks longer than the SQS visibility timeout (30s) were "
     "redelivered. Raised visibility timeout to 15 min and made send_email idempotent.",
     ("customers got duplicate emails, why", "background jobs executed twice")),
    ("pydantic-v2", "shop-api", "main", "code_change", 40,
     "Migrated to Pydantic v2: orm_mode became from_attributes, validators became "
     "field_validator; schema generation is 6x faster on startup.",
     ("what changed when upgrading the validation library",
      "how long did the model layer migration take and what renamed")),
    ("search-trgm", "shop-api", "main", "decision", 55,
     "Product search uses Postgres pg_trgm with a GIN index instead of Elasticsearch: 40k "
     "products do not justify running a cluster.",
     ("why no elasticsearch for product lookup", "how is catalogue search implemented")),
    ("pandas-shop", "shop-api", "main", "code_change", 16,
     "Removed pandas from shop-api: the only use was the CSV export, now written with the "
     "csv module; image shrank by 120MB.",
     ("why was the dataframe dependency dropped from the api",
      "how did the container image get smaller")),
    ("session-fixation", "shop-api", "fix/login-redirect", "code_change", 4,
     "Regenerate the session id on successful login to prevent session fixation; the old "
     "session is deleted from Redis.",
     ("do we rotate the session after sign in", "session fixation mitigation")),
    # -- infra --------------------------------------------------------------------------------
    ("tf-upgrade", "infra", "chore/terraform-1.9", "code_change", 7,
     "Upgraded Terraform to 1.9 and the AWS provider to 5.60; the aws_s3_bucket_acl resources "
     "needed explicit ownership controls first.",
     ("what had to change before the terraform bump", "bucket acl errors during provider upgrade")),
    ("eks-nodes", "infra", "main", "decision", 28,
     "EKS node groups moved to Graviton m7g instances: same p95 for the API, 22% cheaper. The "
     "ML workers stay on x86 because of a CUDA dependency.",
     ("why did the cluster move to arm machines", "which workloads stayed on intel nodes")),
    ("dns-ttl", "infra", "main", "problem", 19,
     "Failover took 20 minutes because the Route53 record had TTL 3600; lowered to 60 for the "
     "api and admin records.",
     ("why was failover so slow", "dns caching delayed the switchover")),
    ("certs-expired", "infra", "main", "problem", 1,
     "The staging TLS certificate expired: cert-manager could not solve the HTTP-01 challenge "
     "behind the new WAF rule. Switched to DNS-01 with Route53.",
     ("why did the staging https certificate lapse yesterday",
      "acme challenge failing behind the firewall")),
    ("backup-restore", "infra", "main", "decision", 44,
     "Nightly RDS snapshots plus PITR 7 days; a restore drill every quarter, the last one "
     "took 38 minutes for the 180GB database.",
     ("how long does restoring the database take", "what is our backup retention")),
    ("helm-diff", "infra", "main", "code_change", 23,
     "CI now runs helm diff on every pull request and posts it as a comment, so reviewers see "
     "rendered manifest changes.",
     ("how do reviewers see kubernetes manifest changes",
      "what does the pipeline post on pull requests for charts")),
    ("karpenter", "infra", "chore/terraform-1.9", "decision", 9,
     "Adopted Karpenter instead of cluster-autoscaler on the terraform-1.9 branch: faster "
     "scale-up (40s vs 3min) and it picks instance types itself.",
     ("why replace the autoscaler", "how fast do new nodes come up now")),
    ("secrets-sops", "infra", "main", "decision", 58,
     "Secrets live in the repo encrypted with SOPS and KMS; plain Kubernetes secrets in git "
     "were rejected in review.",
     ("how are credentials stored in the infrastructure repository",
      "why not commit kubernetes secrets directly")),
    ("nat-cost", "infra", "main", "problem", 31,
     "The AWS bill jumped 4k a month from NAT gateway data processing: the pods pulled images "
     "from Docker Hub through NAT. Added a VPC endpoint for ECR and a pull-through cache.",
     ("why did the cloud bill go up", "expensive network egress from image pulls")),
    ("grafana-alerts", "infra", "main", "code_change", 12,
     "Alert on 5xx rate above 2% for 5 minutes per service, routed to the on-call channel; the "
     "old 1% threshold paged on every deploy.",
     ("what is the error rate alert threshold", "why were we paged during each release")),
    ("terraform-state-lock", "infra", "chore/terraform-1.9", "problem", 6,
     "terraform apply hung on a stale DynamoDB state lock from a cancelled CI job; released "
     "it with force-unlock after checking no run was active.",
     ("apply stuck waiting for a lock", "how did we clear the stale state lock")),
    ("vpc-cidr", "infra", "main", "decision", 52,
     "The new VPC uses 10.40.0.0/16 so it does not overlap the office VPN range 10.0.0.0/12 "
     "used by the peering.",
     ("why that ip range for the new network", "address overlap with the vpn")),
    ("log-retention", "infra", "main", "code_change", 21,
     "CloudWatch log retention set to 30 days for application logs and 1 year for audit "
     "logs; unlimited retention was costing 900 dollars a month.",
     ("how long are logs kept", "why did we limit log storage")),
    # -- mobile-app ---------------------------------------------------------------------------
    ("ios-crash", "mobile-app", "release/4.2", "problem", 5,
     "iOS 4.2 crashed on launch for users upgrading from 4.0: the Core Data migration mapping "
     "model was missing for the v3 schema. Added a lightweight migration.",
     ("why did the app crash at start after the update",
      "missing database migration on iphone release")),
    ("android-minsdk", "mobile-app", "main", "decision", 38,
     "Raised Android minSdk to 26: under 1% of users were below it and it removes the "
     "desugaring workaround for java.time.",
     ("what is the lowest android version we support", "why drop old android releases")),
    ("rn-upgrade", "mobile-app", "main", "code_change", 26,
     "Upgraded React Native to 0.74 with the new architecture disabled for now; the "
     "maps library is not Fabric-compatible yet.",
     ("why is the new architecture still off", "what blocked enabling fabric")),
    ("push-tokens", "mobile-app", "release/4.2", "problem", 8,
     "Push notifications stopped for Android after the Firebase project move: the server "
     "still used the old sender id. Re-registered device tokens on app start.",
     ("why did notifications stop arriving on android", "firebase sender mismatch")),
    ("deep-links", "mobile-app", "main", "code_change", 17,
     "Universal links now use the apple-app-site-association served from the CDN with "
     "content-type application/json; the file was served as octet-stream and ignored.",
     ("why did links not open the app on ios", "association file content type issue")),
    ("hermes", "mobile-app", "main", "decision", 48,
     "Enabled Hermes on both platforms: cold start went from 2.9s to 1.7s on a Pixel 4a.",
     ("how did app startup get faster", "which javascript engine do we ship")),
    ("release-signing", "mobile-app", "release/4.2", "code_change", 7,
     "Android release builds are signed in CI with the upload key from the secrets manager; "
     "Play App Signing holds the real key.",
     ("where does the apk signing key come from", "how are store builds signed")),
    ("offline-cache", "mobile-app", "main", "decision", 29,
     "Offline mode stores the last 50 orders in SQLite via op-sqlite; AsyncStorage was too "
     "slow past 2MB.",
     ("how does the app keep orders without network", "why not asyncstorage for offline data")),
    ("a11y-labels", "mobile-app", "release/4.2", "code_change", 4,
     "Added accessibilityLabel to every icon button in checkout after the audit found 14 "
     "unlabeled controls for VoiceOver.",
     ("screen reader could not announce buttons, what did we do",
      "accessibility audit findings in checkout")),
    ("sentry-sourcemaps", "mobile-app", "main", "problem", 20,
     "Sentry stack traces were minified because sourcemaps were uploaded with the wrong "
     "release name; the upload step now uses the versionCode-based release id.",
     ("why were crash reports unreadable", "error tracker shows minified frames")),
    ("image-cache", "mobile-app", "main", "code_change", 34,
     "Switched product images to expo-image with a 200MB disk cache; scrolling the catalogue "
     "no longer stutters on mid-range phones.",
     ("why was scrolling the product list janky", "how are pictures cached on device")),
    # -- docs-site ----------------------------------------------------------------------------
    ("docs-search", "docs-site", "main", "decision", 36,
     "The docs use Pagefind for search: fully static, no hosted index, and the bundle is "
     "under 100KB for our 400 pages.",
     ("why not algolia for the documentation", "how does searching the docs work")),
    ("docs-broken-links", "docs-site", "main", "problem", 11,
     "The docs build now fails on broken internal links (lychee in CI) after the API rename "
     "left 37 dead references.",
     ("why does the documentation build fail on links", "dead references after renaming the api")),
    ("docs-versioning", "docs-site", "main", "decision", 42,
     "Only the two latest major versions keep separate docs; older ones redirect to a "
     "frozen archive site.",
     ("how many versions of the docs do we host", "what happens to docs of old releases")),
    ("docs-mermaid", "docs-site", "main", "code_change", 15,
     "Diagrams render with Mermaid at build time to SVG instead of client-side, cutting 600KB "
     "of JavaScript from every page.",
     ("why are the diagrams static images now", "how did the pages lose so much script weight")),
    ("docs-i18n", "docs-site", "main", "decision", 57,
     "Translations are not machine generated: only German and Japanese, maintained by the "
     "regional teams, with an outdated banner when the English page is newer.",
     ("which languages are the docs translated into", "why no automatic translation")),
    # -- shared / cross-repo twins (hard negatives for the filters) ---------------------------
    ("ruff-ml", "ml-pipeline", "main", "decision", 47,
     "Replaced flake8, isort and black with ruff in ml-pipeline; lint takes 0.4s instead of 38s "
     "and the notebooks are excluded.",
     ("why did the data project switch linters", "which tool formats the pipeline code")),
    ("ruff-shop", "shop-api", "main", "code_change", 43,
     "shop-api enabled ruff's bugbear and pyupgrade rule sets; the 212 findings were fixed in "
     "one commit with --fix plus 9 by hand.",
     ("which extra lint rules did the api turn on",
      "how many lint findings were fixed when rules were added")),
    ("python312-ml", "ml-pipeline", "main", "code_change", 39,
     "ml-pipeline moved to Python 3.12; the only blocker was the old protobuf 3.20 pin, "
     "bumped to 4.25.",
     ("what held back the interpreter upgrade in the pipeline",
      "which protobuf version do we need now")),
    ("python312-shop", "shop-api", "main", "problem", 37,
     "shop-api could not move to Python 3.12 yet: the uwsgi plugin fails to build; we switch "
     "to gunicorn first.",
     ("why is the api still on the older interpreter", "what blocks upgrading python in the shop")),
    ("renovate-infra", "infra", "main", "decision", 53,
     "Renovate groups provider and module bumps weekly and automerges patch updates when "
     "terraform plan shows no changes.",
     ("how are dependency updates handled in the infrastructure repo",
      "which updates merge automatically")),
    ("renovate-mobile", "mobile-app", "main", "decision", 49,
     "In mobile-app Renovate never automerges: native modules need a manual device test, so "
     "all bumps wait for QA.",
     ("do dependency bumps merge automatically in the app", "why is every update manually tested")),
    ("flaky-e2e", "mobile-app", "release/4.2", "problem", 2,
     "Detox e2e tests were flaky on CI: animations still running when tapping. Disabled "
     "animations in the test build and added waitFor on the cart badge.",
     ("why were end to end tests unreliable",
      "intermittent ui test failures on the release branch")),
    ("flaky-api-tests", "shop-api", "main", "problem", 24,
     "API tests were flaky because they shared one Postgres database; each test now runs in a "
     "transaction rolled back at the end (pytest fixture db_session).",
     ("why did backend tests fail randomly", "how are tests isolated from each other")),
    ("timeouts-shop", "shop-api", "feat/checkout-v2", "decision", 10,
     "Payment provider calls time out after 8s with one retry; the checkout shows 'still "
     "processing' and polls instead of failing.",
     ("what happens when the payment call is slow", "how long do we wait for the provider")),
    ("feature-flags", "shop-api", "main", "decision", 46,
     "Feature flags come from Unleash self-hosted; flags older than 90 days fail the lint "
     "check so they get removed.",
     ("which flag service do we use", "how do we stop stale toggles accumulating")),
    ("cache-headers", "docs-site", "main", "code_change", 9,
     "Hashed assets get Cache-Control immutable for a year; HTML gets no-cache so deploys show "
     "immediately.",
     ("why do users see new docs right after deploy", "what caching rules do static files get")),
    ("gpu-quota", "infra", "main", "problem", 13,
     "Training jobs sat pending: the account's G-instance vCPU quota was 64. Requested 256 and "
     "added a Karpenter limit so one job cannot take them all.",
     ("why were training jobs stuck pending", "how did we raise the accelerator instance limit")),
    ("model-rollback", "ml-pipeline", "main", "decision", 4,
     "Rolled back ranker v14 to v13 after the A/B test showed add-to-cart down 2.1%; v14 "
     "stays in the registry as archived.",
     ("why was the new ranking model reverted", "which ranker version is live")),
    ("csv-export", "shop-api", "main", "problem", 28,
     "The admin CSV export timed out for merchants with 100k orders; it is now a background "
     "job that emails a signed S3 link.",
     ("why did exporting orders time out", "how do merchants get large reports now")),
    ("branch-protection", "docs-site", "main", "decision", 41,
     "main in docs-site requires one review and a green build, but docs writers may merge "
     "typo fixes labelled 'typo' without review.",
     ("can documentation fixes skip review", "what are the merge rules for the docs")),
    ("redis-eviction", "shop-api", "main", "problem", 17,
     "Carts vanished for some users: Redis hit maxmemory with allkeys-lru and evicted cart "
     "keys. Carts moved to a separate Redis with noeviction; the cache instance keeps LRU.",
     ("why did shopping baskets disappear", "which eviction policy does the cart store use")),
]
