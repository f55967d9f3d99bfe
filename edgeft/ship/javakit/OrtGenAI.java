package edgeft.kit;

import com.sun.jna.Library;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import com.sun.jna.ptr.LongByReference;
import com.sun.jna.ptr.PointerByReference;

/**
 * JNA binding of the ONNX Runtime GenAI C API functions the kit uses (ort_genai_c.h). Every
 * OgaResult* return is null on success; otherwise OgaResultGetError says why.
 */
public interface OrtGenAI extends Library {
    OrtGenAI INSTANCE = Native.load("onnxruntime-genai", OrtGenAI.class);

    String OgaResultGetError(Pointer result);
    void OgaDestroyResult(Pointer result);
    void OgaDestroyString(Pointer string);
    void OgaShutdown();
    Pointer OgaCreateModel(String configPath, PointerByReference out);
    void OgaDestroyModel(Pointer model);
    Pointer OgaCreateTokenizer(Pointer model, PointerByReference out);
    void OgaDestroyTokenizer(Pointer tokenizer);
    Pointer OgaTokenizerApplyChatTemplate(Pointer tokenizer, String templateStr, String messages, String tools,
                                          byte addGenerationPrompt, PointerByReference out);
    Pointer OgaTokenizerEncode(Pointer tokenizer, String text, Pointer sequences);
    Pointer OgaTokenizerDecode(Pointer tokenizer, int[] tokens, long count, PointerByReference out);
    Pointer OgaCreateSequences(PointerByReference out);
    void OgaDestroySequences(Pointer sequences);
    long OgaSequencesGetSequenceCount(Pointer sequences, long index);
    Pointer OgaSequencesGetSequenceData(Pointer sequences, long index);
    Pointer OgaCreateGeneratorParams(Pointer model, PointerByReference out);
    void OgaDestroyGeneratorParams(Pointer params);
    Pointer OgaGeneratorParamsSetSearchNumber(Pointer params, String name, double value);
    Pointer OgaCreateGenerator(Pointer model, Pointer params, PointerByReference out);
    void OgaDestroyGenerator(Pointer generator);
    Pointer OgaGenerator_AppendTokenSequences(Pointer generator, Pointer sequences);
    byte OgaGenerator_IsDone(Pointer generator);
    Pointer OgaGenerator_GenerateNextToken(Pointer generator);
    Pointer OgaGenerator_GetNextTokens(Pointer generator, PointerByReference out, LongByReference count);
}
