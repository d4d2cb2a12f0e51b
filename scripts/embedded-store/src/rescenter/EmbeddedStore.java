package rescenter;

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.h2.H2Collection;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import org.h2.mvstore.MVMap;
import org.h2.mvstore.MVStore;

/**
 * rescenter's embedded MongoDB-wire server: mongo-java-server on an H2 MVStore
 * file, for development, CI and small single-node installs.
 *
 * <p>Usage: {@code EmbeddedStore HOST PORT FILE [commit|fsync|background]}.
 *
 * <p>Durability. The MVStore keeps changes in memory and writes them to its file
 * on commit; left alone it commits once a second, so a crash of the process
 * loses the last second of acknowledged writes. Here every request that changed
 * something is committed before its answer goes out ({@code commit}, the
 * default): an acknowledged write survives {@code kill -9} of this process.
 * Concurrent writers share commits: a writer whose change an earlier commit
 * already carried finds nothing left to write. {@code fsync} also forces the
 * file to disk before answering (survives a power loss, costs a disk flush per
 * write); {@code background} keeps the library's one-second commit (measurements
 * only). A graceful stop (SIGTERM, SIGINT) commits and closes the file.
 *
 * <p>Reads by key. The library answers a filter through an index only when the
 * filter names exactly that index's fields: {@code {_id: x}} is a lookup, but
 * {@code {_id: x, _version: 3}} (every guarded write of the service) reads the
 * whole collection. {@link KeyedBackend} looks such a filter's document up by
 * {@code _id} first and matches the whole filter against it alone, as MongoDB
 * does with its {@code _id} index.
 */
public final class EmbeddedStore {

    /** The library's presets are older than current PyMongo accepts; claim MongoDB 5.0 (wire version 13). */
    static final MongoVersion MONGO_5_0 = new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(5, 0, 0);
        }

        @Override
        public int getWireVersion() {
            return 13;
        }
    };

    /**
     * Commands that never change data: no commit after them. Any other command,
     * known or not, is committed before its answer.
     */
    static final Set<String> READ_ONLY = Set.of(
            "find", "getMore", "count", "distinct", "killCursors", "endSessions",
            "hello", "ismaster", "isMaster", "ping", "buildInfo", "buildinfo", "getLastError",
            "listCollections", "listIndexes", "listDatabases", "serverStatus", "dbStats",
            "collStats", "connectionStatus", "getParameter", "getCmdLineOpts", "whatsmyuri",
            "saslStart", "saslContinue", "getFreeMonitoringStatus", "explain");

    private EmbeddedStore() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 3 || args.length > 4) {
            System.err.println("usage: EmbeddedStore HOST PORT FILE [commit|fsync|background]");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Path file = Path.of(args[2]).toAbsolutePath();
        String durability = args.length == 4 ? args[3] : "commit";
        if (!Set.of("commit", "fsync", "background").contains(durability)) {
            System.err.println("durability must be commit, fsync or background, not " + durability);
            System.exit(2);
        }
        Files.createDirectories(file.getParent());

        MVStore store = new MVStore.Builder().fileName(file.toString()).open();
        H2Backend h2 = new KeyedBackend(store);
        h2.version(MONGO_5_0);
        MongoBackend backend = durability.equals("background") ? h2 : committing(h2, store, durability.equals("fsync"));

        MongoServer server = new MongoServer(backend);
        server.bind(host, port);
        System.err.printf("embedded store: %s:%d, data in %s, durability %s%n", host, port, file, durability);

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            server.shutdownNow();
            h2.close(); // commits what is left and closes the file
            System.err.println("embedded store: stopped, data committed");
        }, "embedded-store-shutdown"));
        Thread.currentThread().join();
    }

    /**
     * The backend, with a commit (and an fsync when asked) after every command
     * that may have written, before its answer is sent: the server encodes and
     * writes the answer only once the backend call returns.
     *
     * <p>{@code MVStore.commit()} takes the store's lock, so a writer whose
     * change another thread is storing at that moment waits until that store
     * has reached the file, then finds nothing left of its own to write: one
     * file write serves every writer that arrived during the previous one.
     */
    static MongoBackend committing(H2Backend h2, MVStore store, boolean fsync) {
        InvocationHandler handler = (proxy, method, args) -> {
            String command = commandOf(method.getName(), args);
            try {
                Object result = method.invoke(h2, args);
                return method.getName().equals("version") ? proxy : result;
            } catch (InvocationTargetException e) {
                throw e.getCause(); // a failed batch may have written part of itself: committed below
            } finally {
                if (command != null && !READ_ONLY.contains(command)) {
                    store.commit();
                    if (fsync) {
                        store.sync();
                    }
                }
            }
        };
        return (MongoBackend) Proxy.newProxyInstance(
                MongoBackend.class.getClassLoader(), new Class<?>[] {MongoBackend.class}, handler);
    }

    /** The command a backend call runs for a client, or null for calls that are not requests. */
    static String commandOf(String method, Object[] args) {
        switch (method) {
            case "handleMessage": {
                Document body = ((MongoMessage) args[0]).getDocument();
                return body.isEmpty() ? "" : body.keySet().iterator().next();
            }
            case "handleCommand":
                return (String) args[2];
            case "handleQuery":
                return ""; // legacy OP_QUERY (not sent by current drivers): commit to be safe
            default:
                return null;
        }
    }

    /**
     * The H2 backend, with collections that answer a filter naming {@code _id}
     * and other fields from the {@code _id} index ({@link KeyedCollection}).
     */
    static final class KeyedBackend extends H2Backend {

        KeyedBackend(MVStore store) {
            super(store);
        }

        @Override
        protected MongoDatabase openOrCreateDatabase(String databaseName) {
            return new KeyedDatabase(databaseName);
        }

        /** Opens collections as {@link H2Database} does, as {@link KeyedCollection}s. */
        final class KeyedDatabase extends H2Database {

            KeyedDatabase(String databaseName) {
                super(databaseName, getMvStore(), getCursorRegistry());
            }

            @Override
            protected MongoCollection<Object> openOrCreateCollection(String collectionName, CollectionOptions options) {
                String namespace = getFullCollectionNamespace(collectionName);
                MVStore store = getMvStore();
                MVMap<Object, Document> data = store.openMap("databases." + namespace);
                MVMap<String, Object> meta = store.openMap("meta." + namespace);
                return new KeyedCollection(this, collectionName, options, data, meta, cursorRegistry);
            }
        }
    }

    /**
     * A collection whose filters that name {@code _id} among other fields read
     * the candidate document through the {@code _id} index, then match the whole
     * filter against it; any other filter goes the library's way.
     */
    static final class KeyedCollection extends H2Collection {

        KeyedCollection(MongoDatabase database, String collectionName, CollectionOptions options,
                        MVMap<Object, Document> data, MVMap<String, Object> meta, CursorRegistry cursors) {
            super(database, collectionName, options, data, meta, cursors);
        }

        @Override
        protected QueryResult queryDocuments(Document query, Document orderBy, int numberToSkip, int limit,
                                             int batchSize, Document fieldSelector) {
            if (query.size() > 1 && query.containsKey("_id")) {
                Document byId = new Document("_id", query.get("_id"));
                List<Index<Object>> indexes = getIndexes();
                if (indexes.stream().noneMatch(index -> index.canHandle(query))) {
                    for (Index<Object> index : indexes) {
                        if (index.canHandle(byId)) {
                            Iterable<Object> candidates = index.getPositions(byId);
                            return matchDocuments(query, candidates, orderBy, numberToSkip, limit, batchSize,
                                    fieldSelector);
                        }
                    }
                }
            }
            return super.queryDocuments(query, orderBy, numberToSkip, limit, batchSize, fieldSelector);
        }
    }
}
